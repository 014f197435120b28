"""What the generation tab tells while it works and when it fails: previews of the images as they are drawn, the
decoding after the last step, and errors in the form's own words (its labels, not the API's field names)."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import numpy as np
from PIL import Image
from playwright.sync_api import expect

from tests.browser.test_generate_page import fill
from tests.service.helpers import wait_until
from tests.service.openai.test_images import _expected_preview, _reference_tokens

PROMPT = "a lighthouse at dusk"


def shown_pixels(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    return np.asarray(image.convert("RGB"))


def test_after_the_last_step_the_page_says_it_is_decoding_the_images(make_server, tab):
    live = make_server()
    gate = live.decode_gate()  # the images stay in the decoder until the page has been looked at
    watched = tab(live)
    page = watched.open().page
    fill(page, PROMPT, count=2, guidance=5, seed=11)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_until(gate.entered.is_set, "the images to reach the decoder")
    status = page.locator("#generate-status")
    expect(status).to_have_text("Decoding images…")
    bar = page.locator("#g-progress")
    assert bar.evaluate("bar => bar.value === bar.max")  # every image token is drawn
    assert page.get_by_role("button", name="Cancel").is_enabled()  # the request still runs
    watched.screenshot("generate-decoding", full_page=False)
    gate.release()
    expect(status).to_have_text("Done.")
    assert page.get_by_role("list", name="Generated images").get_by_role("img").count() == 2


def test_the_page_shows_previews_of_the_images_while_they_are_drawn(make_server, tab, tiny_model, tiny_tokenizer):
    live = make_server()
    engine = live.runtime.engine
    total = live.runtime.info.output_image_tokens
    looked = threading.Event()
    held_at: list[int] = []

    def hold_after_the_first_preview(request: Any) -> None:
        # the step after the first preview point waits until the page has shown that preview
        if request.preview_steps and request.steps_done == min(request.preview_steps) and not looked.is_set():
            held_at.append(request.steps_done)
            looked.wait(timeout=120)

    engine.fault_hook = hold_after_the_first_preview
    watched = tab(live)
    page = watched.open().page
    fill(page, PROMPT, count=2, guidance=5, seed=21, temperature=1)
    page.get_by_role("button", name="Generate", exact=True).click()
    previews = page.get_by_role("list", name="Previews of the images being drawn").get_by_role("img")
    expect(previews).to_have_count(2)
    wait_until(lambda: held_at, "the engine to wait at the first preview")
    steps = held_at[0]
    assert 0 < steps < total
    expect(page.locator("#g-preview-line")).to_have_text(f"Drawn so far: step {steps} of {total}.")
    assert previews.nth(0).get_attribute("alt") == "Preview of image 1 of 2"
    # what the page shows is the drawing so far: the first `steps` image tokens of the request's own images
    tokens = _reference_tokens(tiny_model, tiny_tokenizer, PROMPT, 2, seed=21)
    expected = _expected_preview(tiny_model, tokens, steps)
    for index in range(2):
        np.testing.assert_array_equal(shown_pixels(previews.nth(index).get_attribute("src")), expected[index])
    watched.screenshot("generate-preview", full_page=False)
    looked.set()
    engine.fault_hook = None

    expect(page.locator("#generate-status")).to_have_text("Done.")
    gallery = page.get_by_role("list", name="Generated images").get_by_role("img")
    assert gallery.count() == 2
    assert page.locator("#g-preview").is_hidden()  # the previews give way to the images
    assert previews.count() == 0


def test_previews_can_be_turned_off(server, tab):
    page = tab(server).open().page
    fill(page, PROMPT, count=1, guidance=5, seed=22)
    page.locator("#generate-form details.options summary").click()
    page.get_by_label("Previews", exact=True).select_option("0")
    page.evaluate("""() => {
      window.previewsShown = 0;
      new MutationObserver(() => { window.previewsShown += document.querySelectorAll('#previews img').length; })
        .observe(document.getElementById('previews'), {childList: true, subtree: true});
    }""")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#generate-status")).to_have_text("Done.")
    assert page.evaluate("window.previewsShown") == 0


def test_errors_name_the_forms_labels_not_the_apis_fields(server, tab):
    watched = tab(server)
    watched.expected_statuses.add(422)
    page = watched.open().page
    error = page.locator("#generate-error")
    generate = page.get_by_role("button", name="Generate", exact=True)

    fill(page, PROMPT, count=17, guidance=5, seed=1)
    generate.click()
    expect(error).to_have_text("The server said (422): Images must be at most 16.")
    watched.screenshot("generate-error-labels", full_page=False)

    fill(page, PROMPT, count=0, guidance=30, seed=1)
    generate.click()
    expect(error).to_have_text("The server said (422): Images must be at least 1; Guidance must be at most 20.")

    # a refusal without field details (more images than the server's rows hold) names the label in its message
    rows = server.runtime.settings.max_rows
    count = rows // 2 + 1
    fill(page, PROMPT, count=count, guidance=5, seed=1)
    generate.click()
    expect(error).to_contain_text(f"“Images” {count} needs {2 * count} rows")
    assert "parallel_size" not in error.inner_text() and "cfg_weight" not in error.inner_text()
