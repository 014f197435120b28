"""Generation in the page: progress from the stream, the requested number of images (the same as the API gives for
the same seed), each downloadable, the seed shown; cancel frees the server's rows; waiting is shown while queued;
a bad value shows the server's message in the form's words."""

from __future__ import annotations

import base64
import io
import re
import threading
import time

import httpx
import numpy as np
from PIL import Image
from playwright.sync_api import expect

from tests.service.helpers import wait_until

# Records the progress bar's values and the state of the buttons at each change, from the page's side.
WATCH_PROGRESS = """() => {
  window.seen = [];
  const bar = document.getElementById('g-progress');
  new MutationObserver(() => window.seen.push({value: Number(bar.getAttribute('value')), max: bar.max,
      generateDisabled: document.getElementById('generate').disabled,
      cancelDisabled: document.getElementById('generate-cancel').disabled}))
    .observe(bar, {attributes: true, attributeFilter: ['value']});
}"""


def fill(page, prompt: str, count: int, guidance: float, seed: int | None, temperature: float = 1.0) -> None:
    page.get_by_role("tab", name="Generate images").click()
    panel = page.get_by_role("tabpanel", name="Generate images")
    panel.get_by_label("Prompt", exact=True).fill(prompt)
    panel.get_by_label("Images", exact=True).fill(str(count))
    panel.get_by_label("Guidance", exact=True).fill(str(guidance))
    panel.get_by_label("Seed", exact=True).fill("" if seed is None else str(seed))
    panel.get_by_label("Temperature", exact=True).fill(str(temperature))


def pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image.convert("RGB"))


def test_a_generation_shows_progress_then_the_requested_images_with_their_seed(server, tab):
    watched = tab(server).open()
    page = watched.page
    fill(page, "a lighthouse at dusk", count=3, guidance=3, seed=1234, temperature=0.8)
    page.evaluate(WATCH_PROGRESS)
    page.get_by_role("button", name="Generate", exact=True).click()
    gallery = page.get_by_role("list", name="Generated images").get_by_role("img")
    gallery.nth(2).wait_for()
    assert gallery.count() == 3
    assert page.locator("#generate-status").inner_text() == "Done."

    seen = page.evaluate("window.seen")
    steps = [s["value"] for s in seen if 0 < s["value"] < s["max"]]
    total = server.runtime.info.output_image_tokens
    assert steps == sorted(steps) and len(steps) >= 2, seen  # progress events moved the bar during the run
    assert seen[-1]["value"] == seen[-1]["max"] == total
    assert all(s["generateDisabled"] and not s["cancelDisabled"] for s in seen if s["value"] < s["max"]), seen
    assert page.get_by_role("button", name="Generate", exact=True).is_enabled()
    side = server.runtime.info.output_image_size
    assert page.locator("#g-seed-line").inner_text().startswith(f"Seed 1234: 3 images of {side}×{side} in ")

    # The page shows exactly what the API returns for the same request (same seed: same images).
    reference = httpx.post(f"{server.url}/generate", timeout=120, json={
        "prompt": "a lighthouse at dusk", "parallel_size": 3, "cfg_weight": 3, "seed": 1234, "temperature": 0.8,
        "format": "png"}).json()
    for i in range(3):
        src = gallery.nth(i).get_attribute("src")
        assert src.startswith("data:image/png;base64,")
        shown = pixels(base64.b64decode(src.split(",", 1)[1]))
        assert shown.shape == (side, side, 3)
        assert np.array_equal(shown, pixels(base64.b64decode(reference["images"][i]["data"])))
    assert page.evaluate("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download 2").click()
    saved = download.value
    assert saved.suggested_filename == "janus-1234-2.png"
    with open(saved.path(), "rb") as file:
        assert np.array_equal(pixels(file.read()), pixels(base64.b64decode(reference["images"][1]["data"])))

    page.get_by_role("button", name="Use this seed").click()
    assert page.get_by_label("Seed", exact=True).input_value() == "1234"
    watched.screenshot("generate-done")


def test_an_empty_seed_lets_the_server_choose_one_and_the_page_shows_it(server, tab):
    page = tab(server).open().page
    fill(page, "a fox", count=1, guidance=1, seed=None)
    page.get_by_label("Prompt", exact=True).press("Control+Enter")  # keyboard: Ctrl+Enter sends the prompt
    page.get_by_role("list", name="Generated images").get_by_role("img").first.wait_for()
    line = page.locator("#g-seed-line").inner_text()
    seed = int(line.split(":")[0].removeprefix("Seed "))
    assert 0 <= seed <= 2**32 - 1


def test_a_bad_value_shows_the_servers_message_in_the_forms_words(server, tab):
    watched = tab(server)
    watched.expected_statuses.add(422)
    page = watched.open().page
    fill(page, "a fox", count=0, guidance=5, seed=1)
    page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator("#generate-error")
    error.wait_for()
    body = {"prompt": "a fox", "parallel_size": 0, "cfg_weight": 5, "seed": 1, "temperature": 1, "format": "png",
            "stream": True}
    details = httpx.post(f"{server.url}/generate", json=body).json()["error"]["details"]
    assert [d["loc"] for d in details] == ["body.parallel_size"]
    # the server's complaint, about the field the form labels "Images"
    assert details[0]["message"] == "Input should be greater than or equal to 1"
    assert error.inner_text() == "The server said (422): Images must be at least 1."
    assert page.get_by_role("button", name="Generate", exact=True).is_enabled()
    assert page.get_by_role("list", name="Generated images").get_by_role("img").count() == 0
    watched.screenshot("generate-bad-input")


def test_cancel_stops_a_running_generation_on_the_server(make_server, tab):
    live = make_server(max_rows=4)
    gate = live.gate()
    watched = tab(live)
    page = watched.open().page
    fill(page, "a fox", count=2, guidance=5, seed=3)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_until(lambda: gate.seen, "the page's request to run")
    assert live.runtime.engine.stats()["running_generate_rows"] == 4
    cancel = page.get_by_role("button", name="Cancel")
    assert cancel.is_enabled() and page.get_by_role("button", name="Generate", exact=True).is_disabled()
    assert page.locator("#generate-status").inner_text().startswith("Waiting")
    cancel.click()
    wait_until(lambda: gate.seen[0].handle.cancelled, "the server to cancel the request the page left")
    gate.release()
    wait_until(lambda: live.runtime.engine.stats()["free_rows"] == 4, "its rows to be freed")
    wait_until(lambda: live.metric("janus_engine_failures_total", kind="cancelled") == 1, "the cancel to count")
    assert page.locator("#generate-status").inner_text() == "Cancelled."
    assert page.get_by_role("button", name="Generate", exact=True).is_enabled() and cancel.is_disabled()
    assert page.locator("#generate-error").is_hidden()


def test_a_queued_generation_says_it_is_waiting_and_cancel_takes_it_out_of_the_queue(make_server, tab):
    live = make_server(max_rows=2)
    gate = live.gate()
    out: dict = {}

    def occupy() -> None:  # another client takes both rows
        with live.client() as http:
            out["reply"] = http.post("/generate", json={"prompt": "a fox", "seed": 1})

    other = threading.Thread(target=occupy, daemon=True)
    other.start()
    wait_until(lambda: gate.seen, "the other client's request to run")
    watched = tab(live)
    page = watched.open().page
    fill(page, "a lighthouse", count=1, guidance=5, seed=2)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_until(lambda: live.runtime.engine.stats()["waiting"] == 1, "the page's request to wait")
    status = page.locator("#generate-status")
    expect(status).to_have_text("Waiting in the queue: 1 request waiting for free rows on the server…")
    watched.screenshot("generate-queued")
    page.get_by_role("button", name="Cancel").click()
    expect(status).to_have_text("Cancelled.")
    gate.release()
    other.join(60)
    assert out["reply"].status_code == 200
    wait_until(lambda: live.runtime.engine.stats()["waiting"] == 0 and live.runtime.engine.stats()["free_rows"] == 2,
               "the queue to empty")
    assert live.metric("janus_engine_failures_total", kind="cancelled") == 1


def test_an_error_in_the_middle_of_the_stream_shows_the_servers_message(make_server, tab):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    page = tab(live).open().page
    fill(page, "a fox", count=1, guidance=5, seed=4)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_until(lambda: gate.seen, "the page's request to run")
    deadline = gate.seen[0].deadline
    wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
    gate.release()
    # the stream had started (200), so the timeout arrives as its `error` event
    expect(page.locator("#generate-error")).to_have_text(re.compile(
        r"^The server said \(504\): the request did not finish within 0\.5 s\. The request took too long\.$"))
    assert page.get_by_role("button", name="Generate", exact=True).is_enabled()
    assert page.get_by_role("list", name="Generated images").get_by_role("img").count() == 0
