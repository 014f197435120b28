"""Image bytes in and out: safe decoding of uploads, JPEG/PNG/WebP + base64 encoding of generated images.

Decoding guards, in order: the encoded size; the pixel count read from the header, before any pixel is
decompressed (a 50 kB PNG can claim 100k x 100k pixels); then the full decode, so truncated files fail here
rather than in the model. Only common raster formats are opened: some PIL plugins (EPS) run external programs.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model.image_processing import to_rgb
from service.api.errors import BadInput, PayloadTooLarge

log = logging.getLogger(__name__)

# Multi-picture JPEGs (MPO, from phones) open through the JPEG plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# PIL format names; WebP is lossy here, with `quality` like JPEG's (PNG is the lossless choice).
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
# An upright RGB picture -> the smaller one the model is given (the image processor's resize and pad).
Shrink = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def allow_pixels(max_pixels: int) -> None:
    """Keep PIL's own bomb check (process-wide) from refusing images our configured limit allows.

    Our limit is checked first from the header; PIL's `MAX_IMAGE_PIXELS` stays as a second line and is only
    ever raised, never lowered or disabled.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def decode_base64(text: str, what: str, limits: ImageLimits) -> bytes:
    """Plain base64 or a `data:image/...;base64,` URL (scheme, media type and `;base64` in any case: RFC 2397)."""
    if text[:5].lower() == "data:":
        head, sep, text = text.partition(",")
        if not sep or not head.lower().endswith(";base64"):
            raise BadInput(f"{what}: a data URL must be base64-encoded (data:image/...;base64,...)")
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(text) // 4 * 3 > limits.max_bytes + 3:
        raise PayloadTooLarge(f"{what} is larger than the {limits.max_bytes} byte limit for one image")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{what} is not valid base64") from None


def decode_image(data: bytes, what: str, limits: ImageLimits, shrink: Shrink | None = None) -> Image.Image:
    """Encoded bytes -> an upright RGB image, or BadInput / PayloadTooLarge with a message for the client."""
    return load_image(open_image(data, what, limits), what, limits, shrink)


def open_image(data: bytes, what: str, limits: ImageLimits) -> Image.Image:
    """Encoded bytes -> an image whose header has been read and checked; none of its pixels is decoded yet."""
    if not data:
        raise BadInput(f"{what} is empty")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit for one image is {limits.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        # Pillow's own check fired first (far above our limit): state the server's limit, not Pillow's.
        raise PayloadTooLarge(_over_pixel_limit(what, _bomb_pixels(err), limits)) from None
    except UnidentifiedImageError:
        raise BadInput(f"{what} is not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as err:  # noqa: BLE001 - plugins raise anything from SyntaxError to struct.error on bad headers
        raise BadInput(f"{what} could not be read: {err}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(_over_pixel_limit(what, (width, height), limits))
    if width < 1 or height < 1:
        raise BadInput(f"{what} has no pixels ({width}x{height})")
    return image


def load_image(image: Image.Image, what: str, limits: ImageLimits, shrink: Shrink | None = None) -> Image.Image:
    """Decode an opened image's pixels -> upright RGB, then `shrink` it (to what the model is given). The full-size
    pixels are freed before this returns, so that they never outlive the decode.

    No reduced decoding (JPEG's `draft`, `reduce`): the picture the model sees would differ from the full decode's
    by 2-3 levels in places, even when reduced only to four times the model's size.
    """
    held = [image]
    result: Image.Image | None = None
    try:
        try:
            image.load()
        except Image.DecompressionBombError as err:
            raise PayloadTooLarge(_over_pixel_limit(what, _bomb_pixels(err), limits)) from None
        except Exception as err:  # noqa: BLE001 - truncated or corrupt data surfaces as OSError, ValueError, ...
            raise BadInput(f"{what} is truncated or corrupt ({image.format}): {err}") from None
        _upright(image, what)
        try:
            held.append(to_rgb(image))
            result = held[-1] if shrink is None else shrink(held[-1])
        except ValueError as err:
            raise BadInput(f"{what}: {err}") from None
        return result
    finally:
        # Closing frees the pixels at once, even while an error's traceback keeps this frame (and them) alive.
        for picture in held:
            if picture is not result:
                picture.close()


def _over_pixel_limit(what: str, size: tuple[int, int] | int | None, limits: ImageLimits) -> str:
    if isinstance(size, tuple):
        found = f"is {size[0]}x{size[1]} = {size[0] * size[1]} pixels"
    else:
        found = "is too many pixels" if size is None else f"is {size} pixels"
    return f"{what} {found}; the server's limit is {limits.max_pixels} pixels (width x height, JANUS_MAX_IMAGE_PIXELS)"


def _bomb_pixels(err: Exception) -> int | None:
    """The pixel count in Pillow's bomb message ("Image size (N pixels) exceeds limit of M pixels, ...")."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return int(found.group(1)) if found else None


def _upright(image: Image.Image, what: str) -> None:
    """Apply the EXIF orientation (phone photos are stored sideways), in place: no copy of an upright picture. A
    broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as err:  # noqa: BLE001 - malformed EXIF must not cost the user their request
        log.info("%s: ignoring unreadable EXIF orientation: %s", what, err)


def encode_images(images: np.ndarray, fmt: str, quality: int = 90) -> list[str]:
    """uint8 [N, H, W, 3] -> base64 JPEG, PNG or WebP strings. `quality` (0-100) applies to JPEG and WebP."""
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}")
    options = {} if fmt == "png" else {"quality": quality}
    out: list[str] = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format=_PIL_FORMATS[fmt], **options)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out
