"""The API key flow (asked for, checked by the server, kept for the tab only) and using the page from the keyboard."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

KEY = "sesame-4c1f"


def key_panel(page):
    return page.get_by_role("region", name="API key")


def test_the_page_asks_for_the_key_and_keeps_it_for_the_tab_only(make_server, tab):
    live = make_server(api_key=KEY)
    watched = tab(live)
    watched.expected_statuses.add(401)
    page = watched.open().page
    # the page itself needs no key, the API does: the page asks, with focus in the key field
    expect(key_panel(page)).to_be_visible()
    expect(page.locator("#model-line")).to_have_text("API key needed")
    assert page.evaluate("document.activeElement.id") == "key-input"
    expect(page.locator("#random-banner")).to_be_visible()  # known from /health, which needs no key
    watched.screenshot("api-key-asked")

    page.keyboard.type("wrong-key")
    page.keyboard.press("Enter")
    error = page.locator("#key-error")
    expect(error).to_be_visible()
    message = httpx.get(f"{live.url}/info", headers={"Authorization": "Bearer wrong-key"}).json()["error"]["message"]
    assert error.inner_text().startswith(f"The server said (401): {message}")
    assert "was wrong" in message

    page.locator("#key-input").fill(KEY)
    page.locator("#key-input").press("Enter")
    expect(key_panel(page)).to_be_hidden()
    expect(page.locator("#model-line")).to_have_text(re.compile(r"^janus-tiny"))
    assert page.evaluate("sessionStorage.getItem('janus-serve.api-key')") == KEY
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []

    # requests carry it: a generation works
    sent = []
    page.on("request", lambda request: request.method == "POST" and sent.append(request.headers.get("authorization")))
    page.get_by_role("tab", name="Generate images").click()
    page.get_by_label("Prompt", exact=True).fill("a fox")
    page.get_by_label("Guidance", exact=True).fill("1")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("list", name="Generated images").get_by_role("img")).to_have_count(1)
    assert sent == [f"Bearer {KEY}"]

    # a reload of the same tab keeps the key; another tab does not have it
    page.reload()
    expect(page.locator("#model-line")).to_have_text(re.compile(r"^janus-tiny"))
    assert key_panel(page).is_hidden()
    other = tab(live)
    other.expected_statuses.add(401)
    other.open()
    expect(key_panel(other.page)).to_be_visible()
    assert other.page.evaluate("sessionStorage.length") == 0

    # forgetting it removes it from the tab
    page.get_by_role("button", name="API key").click()
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#model-line")).to_have_text("API key needed")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_request_without_the_key_asks_for_it(make_server, tab):
    live = make_server(api_key=KEY)
    watched = tab(live)
    watched.expected_statuses.add(401)
    page = watched.open().page
    page.get_by_role("button", name="Close").click()
    expect(key_panel(page)).to_be_hidden()
    page.get_by_role("tab", name="Generate images").click()
    page.get_by_label("Prompt", exact=True).fill("a fox")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#generate-error")).to_contain_text("The server said (401): the API key is missing")
    expect(key_panel(page)).to_be_visible()


def test_the_page_works_from_the_keyboard(server, tab):
    page = tab(server).open().page
    page.locator("body").focus()
    order, zone_outline = [], None
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        if order[-1] == "understand-files":  # hidden input: the drop zone around it shows the focus
            zone_outline = page.evaluate("getComputedStyle(document.getElementById('drop-zone')).outlineStyle")
    # the key button, the selected tab, the file picker (a focusable input inside the drop zone), the question,
    # the options, Ask (Cancel is disabled and skipped), New conversation, then the footer's links
    assert order[:7] == ["key-open", "tab-understand", "understand-files", "question", "SUMMARY", "ask",
                         "new-conversation"], order
    assert zone_outline == "solid"

    page.locator("#tab-understand").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Generate images")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name="Generate images")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "tab-generate"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("a small boat")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_role("list", name="Generated images").get_by_role("img")).to_have_count(1)
    page.locator("#tab-generate").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tabpanel", name="Ask about images")).to_be_visible()
