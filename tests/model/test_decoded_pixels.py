"""Decoder output -> uint8 pixels, at its boundaries, with values worked out by hand from DeepSeek's formula
`clip((x + 1) / 2 * 255, 0, 255)` cast to uint8 (which cuts the fraction off)."""

import numpy as np
import pytest

from model.janus import pixels_to_uint8


@pytest.mark.parametrize(("value", "expected"), [
    (-2.4, 0), (-2.0, 0), (-1.0, 0),  # below the range: clipped to black, not wrapped round
    (-0.5, 63),  # 63.75: the fraction is cut off (rounding would give 64)
    (0.0, 127),  # 127.5 -> 127
    (0.5, 191),  # 191.25
    (0.99, 253),  # 253.725
    (1.0, 255), (2.0, 255), (2.7, 255),  # above the range: clipped to white, not wrapped round
])
def test_boundaries(value, expected):
    assert pixels_to_uint8(np.array([value], np.float32)).tolist() == [expected]


def test_shape_and_type_are_kept_for_a_batch_of_images():
    pixels = np.random.default_rng(0).uniform(-2.5, 2.5, (2, 16, 16, 3)).astype(np.float32)
    out = pixels_to_uint8(pixels)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    expected = np.floor(np.clip((pixels.astype(np.float64) + 1) / 2 * 255, 0, 255))
    assert np.abs(out - expected).max() <= 1  # float32 arithmetic may sit a hair either side of a whole number
    assert out.min() == 0 and out.max() == 255
