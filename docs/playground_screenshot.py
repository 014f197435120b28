"""Retakes docs/playground.png: the playground with the built-in demo model, its Ask tab answering two suggested
questions about an example picture and its Generate tab drawing a suggested prompt (3 images, seed 7), side by side.

    .venv/bin/python docs/playground_screenshot.py      # needs Chromium (.ci/install-browser)

A real server on 127.0.0.1 (the test suite's helpers start it) and a real headless browser, as in tests/browser.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from model.demo import demo_model_dir  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402
from tests.service.helpers import start_server, test_settings  # noqa: E402

VIEWPORT = {"width": 860, "height": 1060}


def _open(browser, url: str) -> Page:  # noqa: ANN001
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{url}/playground/")
    expect(page.locator("#model-line")).not_to_have_text("Connecting to the server…")
    return page


def main() -> None:
    live = start_server(test_settings(demo_model_dir(), max_seq_len=1024))
    shots: list[Image.Image] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            expect.set_options(timeout=120_000)
            ask = _open(browser, live.url)
            # the example picture's random choices, seeded: the same picture every time
            ask.evaluate("() => { let s = 3; Math.random = () => (s = (s * 16807) % 2147483647) / 2147483647; }")
            ask.get_by_role("button", name="Add an example picture").click()
            for question in ("What is in this picture?", "What colour is the shape?"):
                ask.locator("#u-suggestions").get_by_role("button", name=question).click()
                ask.get_by_role("button", name="Ask", exact=True).click()
                expect(ask.locator("#understand-status")).to_have_text(re.compile(r"^Done: "))
            draw = _open(browser, live.url)
            draw.get_by_role("tab", name="Generate images").click()
            draw.locator("#g-suggestions").get_by_role("button", name="a red circle", exact=True).click()
            draw.locator("#g-count").fill("3")
            draw.locator("#g-seed").fill("7")
            draw.get_by_role("button", name="Generate", exact=True).click()
            expect(draw.locator("#gallery img")).to_have_count(3)
            for page in (ask, draw):
                page.evaluate("() => window.scrollTo(0, 0)")
                path = ROOT / "tests" / "results" / f"playground-{len(shots)}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path))
                shots.append(Image.open(path).convert("RGB"))
            browser.close()
    finally:
        live.stop()
    both = Image.new("RGB", (sum(s.width for s in shots) + 12, max(s.height for s in shots)), "white")
    both.paste(shots[0], (0, 0))
    both.paste(shots[1], (shots[0].width + 12, 0))
    both = both.resize((both.width * 3 // 4, both.height * 3 // 4), Image.LANCZOS)
    # a palette of 128 colours: the page is flat colour, and the file stays under 100 KB
    both.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        ROOT / "docs" / "playground.png", optimize=True)


if __name__ == "__main__":
    main()
