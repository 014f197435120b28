"""The evaluator of shape pictures, against pictures whose content the test knows (drawn here with Pillow)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training.judge import colour_name, judge
from training.probes import probes


def test_names_every_probe_picture_right():
    pictures = probes(4, seed=11)
    verdicts = [judge(p.picture) for p in pictures]
    assert [(v.colour, v.shape) for v in verdicts] == [(p.colour, p.shape) for p in pictures]
    assert {v.background for v in verdicts} == {"white"}


@pytest.mark.parametrize(("rgb", "name"), [((255, 0, 0), "red"), ((255, 165, 0), "orange"),
                                           ((255, 255, 0), "yellow"), ((0, 128, 0), "green"),
                                           ((0, 0, 255), "blue"), ((128, 0, 128), "purple"),
                                           ((250, 250, 245), "white")])
def test_colour_names_of_common_renderings(rgb, name):
    assert colour_name(np.array(rgb)) == name


def test_reads_the_background_and_the_place():
    image = Image.new("RGB", (90, 90), (240, 220, 40))
    ImageDraw.Draw(image).rectangle([8, 60, 28, 80], fill=(20, 60, 220))
    verdict = judge(image)
    assert (verdict.colour, verdict.shape, verdict.background, verdict.place) == \
        ("blue", "square", "yellow", "bottom left")


def test_finds_no_shape_on_a_blank_picture():
    assert judge(Image.new("RGB", (64, 64), "white")).shape is None


def test_the_largest_region_decides_despite_specks():
    image = Image.new("RGB", (100, 100), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(50, 20), (80, 75), (20, 75)], fill=(200, 30, 30))
    for x, y in ((5, 5), (90, 8), (7, 92)):  # noise the decoder might leave
        draw.rectangle([x, y, x + 2, y + 2], fill=(30, 30, 200))
    verdict = judge(image)
    assert (verdict.colour, verdict.shape) == ("red", "triangle")
