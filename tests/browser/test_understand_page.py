"""Understanding in the page: images picked or dropped, the answer streamed in (and exactly the API's answer),
follow-up questions that carry the conversation, cancel, and the server's message for a bad image.

The page talks to POST /v1/chat/completions; the expected answers come from the same route called directly (not
streamed) with the conversation written out here, so a page that dropped, reordered or altered a turn would differ.
"""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import expect

from tests.service.helpers import b64, image_bytes, wait_until

MAX_TOKENS = 24

# Records every text the newest answer shows while it is being written, from the page's side.
WATCH_ANSWER = """() => {
  window.shown = [];
  const log = document.getElementById('conversation');
  new MutationObserver(() => {
    const answers = log.querySelectorAll('.turn.assistant .text');
    const text = answers.length ? answers[answers.length - 1].textContent : '';
    if (text && text !== window.shown[window.shown.length - 1]) window.shown.push(text);
  }).observe(log, {subtree: true, childList: true, characterData: true});
}"""

DROP = """([data, name]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const files = new DataTransfer();
  files.items.add(new File([bytes], name, {type: 'image/png'}));
  document.getElementById('drop-zone').dispatchEvent(
    new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true}));
}"""


def png(name: str, seed: int) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": image_bytes((64, 48), seed=seed)}


def set_options(page, max_tokens: int = MAX_TOKENS, temperature: float = 0) -> None:
    panel = page.get_by_role("tabpanel", name="Ask about images")
    panel.get_by_text("Options").click()
    panel.get_by_label("Max tokens").fill(str(max_tokens))
    panel.get_by_label("Temperature", exact=True).fill(str(temperature))


def ask(page, question: str) -> None:
    box = page.get_by_role("textbox", name="Question")
    box.fill(question)
    box.press("Enter")
    expect(page.locator("#understand-status")).to_have_text(re.compile(r"^Done: "))


def answers(page) -> list[str]:
    return page.locator(".turn.assistant .text").all_text_contents()


def data_url(picture: bytes) -> str:
    return "data:image/png;base64," + b64(picture)


def user(text: str, *pictures: bytes) -> dict:
    if not pictures:
        return {"role": "user", "content": text}
    parts = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in pictures]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def api_answer(url: str, messages: list[dict]) -> str:
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_an_answer_streams_into_the_page_and_is_the_apis_answer(server, tab):
    watched = tab(server).open()
    page = watched.page
    page.set_input_files("#understand-files", files=[png("noise.png", seed=1)])
    expect(page.get_by_role("list", name="Images for the next question").get_by_role("img")).to_have_count(1)
    set_options(page)
    page.evaluate(WATCH_ANSWER)
    ask(page, "What is in this picture?")

    expected = api_answer(server.url, [user("What is in this picture?", image_bytes((64, 48), seed=1))])
    assert answers(page) == [expected]
    shown = page.evaluate("window.shown")
    partial = [text for text in shown if text != expected]
    assert len(partial) >= 2, shown  # the text grew in steps before the answer was complete
    assert all(expected.startswith(text) for text in partial), shown
    assert page.get_by_role("button", name="Ask").is_enabled()
    assert page.get_by_role("button", name="Cancel").is_disabled()
    assert page.get_by_role("textbox", name="Question").input_value() == ""
    watched.screenshot("understand-answer")


def test_a_follow_up_question_continues_the_conversation(server, tab):
    watched = tab(server).open()
    page = watched.page
    image = image_bytes((64, 48), seed=2)
    page.set_input_files("#understand-files", files=[{"name": "a.png", "mimeType": "image/png", "buffer": image}])
    set_options(page)
    ask(page, "Describe the picture.")
    bodies = []
    page.on("request", lambda request: request.method == "POST" and bodies.append(request.post_data_json))
    ask(page, "And what colour is it?")

    first, second = answers(page)
    assert first == api_answer(server.url, [user("Describe the picture.", image)])
    history = [user("Describe the picture.", image), {"role": "assistant", "content": first},
               user("And what colour is it?")]
    # the follow-up carries the whole conversation, the image where it was first given
    assert bodies[0]["messages"] == history
    assert second == api_answer(server.url, history)
    assert page.locator(".turn.user").count() == 2
    watched.screenshot("understand-follow-up")

    page.get_by_role("button", name="New conversation").click()
    assert answers(page) == []


def test_picked_and_dropped_images_go_together_in_order(server, tab):
    page = tab(server).open().page
    picked, dropped = image_bytes((64, 48), seed=3), image_bytes((50, 70), seed=4)
    page.set_input_files("#understand-files", files=[{"name": "p.png", "mimeType": "image/png", "buffer": picked}])
    page.evaluate(DROP, [b64(dropped), "d.png"])
    thumbs = page.get_by_role("list", name="Images for the next question").get_by_role("img")
    expect(thumbs).to_have_count(2)
    set_options(page)
    ask(page, "Which one is brighter?")
    assert answers(page) == [api_answer(server.url, [user("Which one is brighter?", picked, dropped)])]
    expect(thumbs).to_have_count(0)  # they belong to the conversation now


def test_a_question_without_an_image_is_answered_too(server, tab):
    page = tab(server).open().page
    set_options(page)
    ask(page, "Hello, who are you?")
    assert answers(page) == [api_answer(server.url, [user("Hello, who are you?")])]


def test_a_picked_image_can_be_removed_before_asking(server, tab):
    page = tab(server).open().page
    page.set_input_files("#understand-files", files=[png("one.png", 5), png("two.png", 6)])
    thumbs = page.get_by_role("list", name="Images for the next question").get_by_role("img")
    expect(thumbs).to_have_count(2)
    page.get_by_role("button", name="Remove one.png").click()
    expect(thumbs).to_have_count(1)
    assert thumbs.first.get_attribute("alt") == "two.png"


def test_a_broken_image_shows_the_servers_message_and_keeps_the_question(server, tab):
    watched = tab(server)
    watched.expected_statuses.add(400)
    page = watched.open().page
    broken = image_bytes((64, 48), seed=7)[:80]  # a PNG cut short
    page.set_input_files("#understand-files", files=[{"name": "cut.png", "mimeType": "image/png", "buffer": broken}])
    box = page.get_by_role("textbox", name="Question")
    box.fill("What is this?")
    box.press("Enter")
    error = page.locator("#understand-error")
    expect(error).to_be_visible()
    message = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [user("What is this?", broken)], "stream": True}).json()["error"]["message"]
    assert "truncated" in message
    assert error.inner_text() == f"The server said (400): {message}" + ("" if message.endswith(".") else ".")
    assert box.input_value() == "What is this?"  # ready to retry with another image
    expect(page.get_by_role("list", name="Images for the next question").get_by_role("img")).to_have_count(1)
    assert page.get_by_role("button", name="Ask").is_enabled()
    watched.screenshot("understand-bad-image")


def test_cancel_stops_a_running_answer_on_the_server(make_server, tab):
    live = make_server(max_rows=4)
    gate = live.gate()
    page = tab(live).open().page
    page.set_input_files("#understand-files", files=[png("x.png", 8)])
    box = page.get_by_role("textbox", name="Question")
    box.fill("Tell me everything.")
    box.press("Enter")
    wait_until(lambda: gate.seen, "the page's request to run")
    assert live.runtime.engine.stats()["running_understand_rows"] == 1
    assert page.get_by_role("button", name="Ask").is_disabled()
    page.get_by_role("button", name="Cancel").click()
    wait_until(lambda: gate.seen[0].handle.cancelled, "the server to cancel the request the page left")
    gate.release()
    wait_until(lambda: live.runtime.engine.stats()["free_rows"] == 4, "its row to be freed")
    expect(page.locator("#understand-status")).to_have_text("Cancelled.")
    assert page.get_by_role("button", name="Ask").is_enabled()
    assert live.metric("janus_engine_failures_total", kind="cancelled") == 1


def test_an_error_in_the_middle_of_the_answer_shows_the_servers_message(make_server, tab):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    page = tab(live).open().page
    box = page.get_by_role("textbox", name="Question")
    box.fill("Hello?")
    box.press("Enter")
    wait_until(lambda: gate.seen, "the page's request to run")
    deadline = gate.seen[0].deadline
    wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
    gate.release()
    # the stream had started (200), so the timeout arrives inside it, in OpenAI's error shape (no status)
    expect(page.locator("#understand-error")).to_have_text("The server said: the request did not finish within 0.5 s.")
    assert answers(page) == [] and box.input_value() == "Hello?"
    assert page.get_by_role("button", name="Ask").is_enabled()


def test_a_bad_option_names_the_forms_label(server, tab):
    watched = tab(server)
    page = watched.open().page
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi?"}], "temperature": 5, "stream": True})
    watched.expected_statuses.add(reply.status_code)
    assert reply.json()["error"]["param"] == "temperature"  # OpenAI's body names the field in `param`
    panel = page.get_by_role("tabpanel", name="Ask about images")
    panel.locator("details.options summary").click()
    panel.get_by_label("Temperature", exact=True).fill("5")
    box = page.get_by_role("textbox", name="Question")
    box.fill("Hi?")
    box.press("Enter")
    expect(page.locator("#understand-error")).to_have_text(
        f"The server said ({reply.status_code}): Temperature must be at most 2.")
