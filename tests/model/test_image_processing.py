import json

import numpy as np
import pytest
from PIL import Image

from model.image_processing import ImageProcessor, to_rgb
from model.tokenizer_builder import write_preprocessor_config

HALF = (0.5, 0.5, 0.5)


def _norm(value: int) -> float:
    """A 0..255 channel value after Janus-Pro's scaling and mean/std 0.5 normalisation."""
    return (value / 255 - 0.5) / 0.5


BG = _norm(127)  # int(0.5 * 255) = 127, the padding colour


@pytest.fixture
def proc() -> ImageProcessor:
    return ImageProcessor(image_size=64, min_size=14, image_mean=HALF, image_std=HALF)


def test_output_is_float32_nchw_at_image_size_for_mixed_inputs(proc):
    images = [Image.new("RGB", (640, 480)), Image.new("L", (10, 300)), Image.new("RGBA", (64, 64))]
    out = proc(images)
    assert out.shape == (3, 3, 64, 64)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]


def test_no_images_gives_an_empty_batch(proc):
    assert proc([]).shape == (0, 3, 64, 64)


def test_known_pixel_value_after_scaling_and_normalisation(proc):
    out = proc([Image.new("RGB", (64, 64), (10, 128, 250))])[0]
    np.testing.assert_allclose(out[:, 5, 7], [_norm(10), _norm(128), _norm(250)], atol=1e-6)
    clip = ImageProcessor(image_size=64)  # the class defaults are CLIP's statistics
    expected = (200 / 255 - 0.48145466) / 0.26862954
    np.testing.assert_allclose(clip([Image.new("RGB", (64, 64), (200, 0, 0))])[0, 0, 0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"image_mean": (0.5,) * 3, "image_std": (0.5,) * 3}, {"do_normalize": False}])
def test_every_byte_value_normalises_to_the_same_bits_as_the_arithmetic(options):
    # scaled in float64, then float32, then normalised in float32: the reference processor's rounding
    proc = ImageProcessor(**options)
    byte_values = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)
    expected = (byte_values.astype(np.float64) * proc.rescale_factor).astype(np.float32)
    if proc.do_normalize:
        expected = (expected - np.asarray(proc.image_mean, np.float32)) / np.asarray(proc.image_std, np.float32)
    ours = proc.normalize(Image.fromarray(byte_values))
    np.testing.assert_array_equal(ours.view(np.uint32), expected.transpose(2, 0, 1).view(np.uint32))


def test_a_wide_image_is_padded_above_and_below_with_the_mean_colour(proc):
    out = proc([Image.new("RGB", (200, 100), (255, 0, 0))])[0]  # -> 64x32, pasted at row (64 - 32) // 2
    np.testing.assert_allclose(out[:, :16, :], BG, atol=1e-6)
    np.testing.assert_allclose(out[:, 48:, :], BG, atol=1e-6)
    np.testing.assert_allclose(out[0, 16:48, :], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[1:, 16:48, :], -1.0, atol=1e-6)


def test_a_tall_image_is_padded_left_and_right_with_the_mean_colour(proc):
    out = proc([Image.new("RGB", (100, 200), (0, 0, 255))])[0]
    np.testing.assert_allclose(out[:, :, :16], BG, atol=1e-6)
    np.testing.assert_allclose(out[:, :, 48:], BG, atol=1e-6)
    np.testing.assert_allclose(out[2, :, 16:48], 1.0, atol=1e-6)


def test_odd_padding_puts_the_extra_row_below_like_the_reference(proc):
    square = proc.resize_and_pad(Image.new("RGB", (300, 100), (0, 255, 0)))
    # short side int(100 / 300 * 64) = 21; offset (64 - 21) // 2 = 21: rows 21..41 hold the image
    pixels = np.asarray(square)
    assert square.size == (64, 64)
    assert tuple(pixels[20, 30]) == (127, 127, 127)
    assert tuple(pixels[21, 30]) == (0, 255, 0)
    assert tuple(pixels[41, 30]) == (0, 255, 0)
    assert tuple(pixels[42, 30]) == (127, 127, 127)


def test_min_size_keeps_a_1000x10_strip_14_pixels_tall():
    janus = ImageProcessor(image_size=384, min_size=14, image_mean=HALF, image_std=HALF)
    pixels = np.asarray(janus.resize_and_pad(Image.new("RGB", (1000, 10), (255, 255, 255))))
    # without the rule the strip would be int(10 / 1000 * 384) = 3 rows; offset (384 - 14) // 2 = 185
    assert pixels.shape == (384, 384, 3)
    rows = np.flatnonzero((pixels[:, 192] == 255).all(axis=1))
    assert (rows.min(), rows.max()) == (185, 198)


def test_the_short_side_is_truncated_like_deepseeks_processor_not_rounded():
    # 333 / 1000 * 384 = 127.87: DeepSeek's VLMImageProcessor (the checkpoints' own) takes 127 rows; transformers'
    # port rounds to 128. Offset (384 - 127) // 2 = 128, so rows 128..254 hold the picture.
    janus = ImageProcessor(image_size=384, min_size=14, image_mean=HALF, image_std=HALF)
    pixels = np.asarray(janus.resize_and_pad(Image.new("RGB", (1000, 333), (255, 255, 255))))
    rows = np.flatnonzero((pixels[:, 192] == 255).all(axis=1))
    assert (rows.min(), rows.max()) == (128, 254)


def test_min_size_above_image_size_still_gives_the_square_size():
    small = ImageProcessor(image_size=8, min_size=14, image_mean=HALF, image_std=HALF)
    assert small([Image.new("RGB", (100, 10))]).shape == (1, 3, 8, 8)


def test_background_color_from_the_config_overrides_the_mean(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_size": 32, "image_mean": HALF, "image_std": HALF, "background_color": [0, 0, 0]}))
    proc = ImageProcessor.from_dir(tmp_path)
    assert proc.background_color == (0, 0, 0)
    assert proc([Image.new("RGB", (64, 16), (255, 255, 255))])[0, 0, 0, 0] == pytest.approx(-1.0)


def test_background_color_defaults_to_int_of_mean_times_255():
    assert ImageProcessor().background_color == (122, 116, 104)  # CLIP mean
    assert ImageProcessor(image_mean=HALF).background_color == (127, 127, 127)


def test_reads_the_janus_pro_values_written_by_the_builder(tmp_path):
    write_preprocessor_config(tmp_path, image_size=96)
    proc = ImageProcessor.from_dir(tmp_path)
    assert (proc.image_size, proc.min_size) == (96, 14)
    assert proc.image_mean == HALF and proc.image_std == HALF
    assert proc.rescale_factor == pytest.approx(1 / 255)
    assert proc.do_normalize and proc.background_color == (127, 127, 127)


def test_do_normalize_false_only_rescales(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_size": 16, "do_normalize": False}))
    out = ImageProcessor.from_dir(tmp_path)([Image.new("RGB", (16, 16), (51, 102, 255))])
    np.testing.assert_allclose(out[0, :, 0, 0], [0.2, 0.4, 1.0], atol=1e-6)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        ImageProcessor.from_dir(tmp_path)


@pytest.mark.parametrize("content", ["{broken", json.dumps({"image_mean": [0.5, 0.5]}), json.dumps([1, 2])])
def test_bad_config_file_is_named(tmp_path, content):
    (tmp_path / "preprocessor_config.json").write_text(content)
    with pytest.raises(ValueError, match=r"preprocessor_config\.json"):
        ImageProcessor.from_dir(tmp_path)


# --- colour modes ----------------------------------------------------------------------------------------


def _palette_red() -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    return image


MODE_CASES = [
    (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
    (lambda: Image.new("L", (8, 8), 200), (200, 200, 200)),
    (_palette_red, (255, 0, 0)),
    (lambda: Image.new("RGBA", (8, 8), (0, 255, 0, 0)), (0, 255, 0)),  # alpha dropped, as the reference does
    (lambda: Image.new("LA", (8, 8), (90, 255)), (90, 90, 90)),
    (lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("YCbCr", (8, 8), (255, 128, 128)), (255, 255, 255)),
    (lambda: Image.new("I;16", (8, 8), 257 * 100), (100, 100, 100)),  # scaled, not clipped to white
    (lambda: Image.new("I;16B", (8, 8), 65535), (255, 255, 255)),
    (lambda: Image.new("I", (8, 8), 257 * 40), (40, 40, 40)),
    (lambda: Image.new("F", (8, 8), 0.5), (128, 128, 128)),
    (lambda: Image.new("La", (8, 8), (60, 255)), (60, 60, 60)),
    (lambda: Image.new("HSV", (8, 8), (0, 0, 255)), (255, 255, 255)),
]


@pytest.mark.parametrize(("make", "rgb"), MODE_CASES, ids=[c[0]().mode for c in MODE_CASES])
def test_every_mode_converts_to_the_expected_rgb(make, rgb, proc):
    image = make()
    converted = to_rgb(image)
    assert converted.mode == "RGB"
    assert converted.getpixel((3, 3)) == rgb
    out = proc([image])
    assert out.shape == (1, 3, 64, 64) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 32, 32], [_norm(c) for c in rgb], atol=1e-6)
