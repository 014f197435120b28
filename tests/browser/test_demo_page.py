"""The playground's first screen with the built-in demo model: it says what the model is, a suggested prompt
draws the colour and shape it names, and a suggested question about the example picture is answered with its colour
and shape (judged by training.judge on the page's own images and by the picture's recorded colour and shape)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator

import pytest
from PIL import Image
from playwright.sync_api import expect

from model.demo import demo_model_dir
from tests.service.helpers import LiveServer, start_server, test_settings
from training.judge import judge


@pytest.fixture(scope="module")
def demo() -> Iterator[LiveServer]:
    live = start_server(test_settings(demo_model_dir(), max_seq_len=1024))
    yield live
    live.stop()


def test_the_banner_says_it_is_a_demo_model_trained_on_shapes(demo, tab):
    page = tab(demo).open().page
    banner = page.locator("#demo-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("a small demo model trained on synthetic shapes, not Janus-Pro")
    expect(page.locator("#random-banner")).to_be_hidden()
    expect(page.locator("#model-line")).to_contain_text("demo model")


def test_a_suggested_prompt_draws_its_colour_and_shape(demo, tab):
    watched = tab(demo).open()
    page = watched.page
    page.get_by_role("tab", name="Generate images").click()
    page.locator("#g-suggestions").get_by_role("button", name="a red circle", exact=True).click()
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value("a red circle")
    page.get_by_label("Seed").fill("7")
    page.get_by_role("button", name="Generate", exact=True).click()
    image = page.locator("#gallery img").first
    expect(image).to_be_visible()
    watched.screenshot("demo-suggested-prompt")
    data = image.get_attribute("src").split(",", 1)[1]
    verdict = judge(Image.open(io.BytesIO(base64.b64decode(data))))
    assert verdict.colour == "red" and verdict.shape == "circle", verdict


def _ask_about_an_example_picture(watched, seed: int) -> tuple[str, str, str]:
    """(colour, shape, answer): the page's example picture (its random choices seeded), asked about with the
    suggested question."""
    page = watched.page
    page.evaluate(f"() => {{ let s = {seed}; Math.random = () => (s = (s * 16807) % 2147483647) / 2147483647; }}")
    page.get_by_role("button", name="Add an example picture").click()
    expect(page.locator("#picked img")).to_have_count(1)
    drawn = page.get_by_role("button", name="Add an example picture")
    colour, shape = drawn.get_attribute("data-colour"), drawn.get_attribute("data-shape")
    page.locator("#u-suggestions").get_by_role("button", name="What is in this picture?").click()
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(page.locator("#understand-status")).to_have_text(re.compile(r"^Done: "))
    answer = page.locator(".turn.assistant .text").last.text_content().lower()
    watched.screenshot(f"demo-example-question-{seed}")
    return colour, shape, answer


def test_a_suggested_question_about_the_example_picture_names_its_colour_and_shape(demo, tab):
    asked = [_ask_about_an_example_picture(tab(demo).open(), seed) for seed in range(1, 7)]
    # bench.demo_quality: the colour in every answer, the shape in 88% (chance: a third)
    assert all(colour in answer for colour, _, answer in asked), asked
    assert sum(shape in answer for _, shape, answer in asked) >= 4, asked
