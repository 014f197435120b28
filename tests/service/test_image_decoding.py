"""Upload decoding: every mode becomes RGB, EXIF orientation is applied, limits and corrupt data are named errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.api.errors import BadInput, PayloadTooLarge
from service.api.images import ImageLimits, decode_base64, decode_image, encode_images

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=1_000_000)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "fmt"), [
    ("1", "PNG"), ("L", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("YCbCr", "JPEG"),
    ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("RGB", "WEBP"), ("RGB", "BMP"), ("LAB", "TIFF"),
])
def test_every_decodable_mode_becomes_rgb(mode, fmt):
    source = Image.new(mode, (12, 8))
    decoded = decode_image(encoded(source, fmt), "image 1", LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (12, 8)


def test_sixteen_bit_images_keep_their_brightness():
    gray = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # half of 65535
    decoded = decode_image(encoded(gray, "PNG"), "image 1", LIMITS)
    assert abs(int(np.asarray(decoded)[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to display
    decoded = decode_image(encoded(wide, "JPEG", exif=exif.tobytes()), "image 1", LIMITS)
    assert decoded.size == (20, 40)


def test_only_the_first_frame_of_an_animation_is_used():
    frames = [Image.new("RGB", (10, 10), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), "image 1", LIMITS)
    assert tuple(np.asarray(decoded)[5, 5]) == (255, 0, 0)


def test_formats_outside_the_allowed_list_are_not_opened():
    # EPS would make Pillow start Ghostscript; it must be refused as unsupported, not run.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadInput, match="supported format"):
        decode_image(eps, "image 1", LIMITS)


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(PayloadTooLarge, match="2000x1000"):
        decode_image(encoded(Image.new("L", (2000, 1000)), "PNG"), "image 1", LIMITS)


def test_byte_limit_is_checked_before_base64_decoding():
    with pytest.raises(PayloadTooLarge):
        decode_base64("A" * (2 * 1024 * 1024), "image 1", LIMITS)


def test_data_urls_must_be_base64():
    with pytest.raises(BadInput, match="base64"):
        decode_base64("data:image/png,rawbytes", "image 1", LIMITS)
    assert decode_base64("data:image/png;base64," + base64.b64encode(b"abc").decode(), "x", LIMITS) == b"abc"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encoded_outputs_decode_back_to_the_same_size(fmt):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = encode_images(pixels, fmt, quality=80)
    decoded = [Image.open(io.BytesIO(base64.b64decode(data))) for data in out]
    assert [d.format for d in decoded] == [fmt.upper()] * 2 and all(d.size == (16, 16) for d in decoded)
    if fmt == "png":
        np.testing.assert_array_equal(np.asarray(decoded[1]), pixels[1])


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_quality_trades_size_for_fidelity(fmt):
    # a smooth gradient with noise: photo-like, so both encoders have something to keep or throw away
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 200, 64, dtype=np.float32)
    base = ramp[None, :, None] + ramp[:, None, None] / 4 + rng.normal(0, 12, (64, 64, 3))
    pixels = np.clip(base, 0, 255).astype(np.uint8)[None]
    low, high = (base64.b64decode(encode_images(pixels, fmt, quality=q)[0]) for q in (10, 95))
    assert len(low) < len(high)
    errors = [np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int32) - pixels[0]).mean()
              for data in (low, high)]
    assert errors[1] < errors[0]


def test_an_unknown_output_format_is_a_programming_error():
    with pytest.raises(ValueError, match="gif"):
        encode_images(np.zeros((1, 4, 4, 3), np.uint8), "gif")
