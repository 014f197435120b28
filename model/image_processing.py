"""Image -> normalised pixels for the SigLIP understanding encoder, as Janus's `VLMImageProcessor` does it.

RGB; resize so the long side is `image_size` (bicubic with PIL's antialiasing, short side at least
`min_size`); pad to a centred square of the background colour; scale; normalise. Channels-first float32.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"

# The reference class defaults (CLIP's statistics); Janus-Pro's preprocessor_config.json says 0.5 instead.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


@dataclass(frozen=True, slots=True)
class ImageProcessor:
    image_size: int = 384
    min_size: int = 14
    image_mean: tuple[float, float, float] = _CLIP_MEAN
    image_std: tuple[float, float, float] = _CLIP_STD
    rescale_factor: float = 1.0 / 255.0
    do_normalize: bool = True
    background_color: tuple[int, int, int] | None = None  # None: derived from the mean

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.min_size <= 0:
            raise ValueError(
                f"image_size ({self.image_size}) and min_size ({self.min_size}) must be positive")
        if self.background_color is None:
            # The reference pads with the mean colour, so padding normalises to (almost) zero.
            object.__setattr__(self, "background_color", tuple(int(m * 255) for m in self.image_mean))
        for name in ("image_mean", "image_std", "background_color"):
            value = tuple(getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs 3 values (one per RGB channel), got {list(value)}")
            object.__setattr__(self, name, value)
        if self.do_normalize and any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {list(self.image_std)}")
        if any(not 0 <= c <= 255 for c in self.background_color):  # type: ignore[union-attr]
            raise ValueError(f"background_color must be in 0..255, got {list(self.background_color)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImageProcessor:
        kwargs: dict[str, Any] = {}
        for key in ("image_size", "min_size"):
            if key in raw:
                kwargs[key] = int(raw[key])
        for key in ("image_mean", "image_std", "background_color"):
            if raw.get(key) is not None:
                kwargs[key] = _triple(raw[key], key)
        if "background_color" in kwargs:
            kwargs["background_color"] = tuple(int(c) for c in kwargs["background_color"])
        if "rescale_factor" in raw:
            kwargs["rescale_factor"] = float(raw["rescale_factor"])
        if "do_normalize" in raw:
            kwargs["do_normalize"] = bool(raw["do_normalize"])
        return cls(**kwargs)

    @classmethod
    def from_dir(cls, path: str | Path) -> ImageProcessor:
        file = Path(path) / PREPROCESSOR_CONFIG_FILE
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"image preprocessor config not found: {file}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{file} must hold a JSON object")
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{file}: {err}") from None

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`[N, 3, image_size, image_size]` float32."""
        size = self.image_size
        out = np.empty((len(images), 3, size, size), dtype=np.float32)
        for index, image in enumerate(images):
            out[index] = self.normalize(self.resize_and_pad(image))
        return out

    def resize_and_pad(self, image: Image.Image) -> Image.Image:
        """The square RGB image the encoder sees, before scaling."""
        rgb = to_rgb(image)
        width, height = rgb.size
        if width <= 0 or height <= 0:
            raise ValueError(f"image has no pixels ({width}x{height})")
        longest = max(width, height)
        # Capped at image_size: a min_size above it (tiny configs) would otherwise overflow the square.
        floor = min(self.min_size, self.image_size)
        # Truncated, as in DeepSeek's processor (transformers' port rounds: one row more for some aspect ratios).
        new_h = max(int(height / longest * self.image_size), floor)
        new_w = max(int(width / longest * self.image_size), floor)
        resized = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if new_w == new_h:
            return resized
        side = max(new_w, new_h)
        square = Image.new("RGB", (side, side), self.background_color)
        square.paste(resized, ((side - new_w) // 2, (side - new_h) // 2))
        return square

    def normalize(self, image: Image.Image) -> np.ndarray:
        """HWC uint8 RGB -> CHW float32, scaled and (if configured) normalised."""
        pixels = np.asarray(image, dtype=np.uint8)
        table = _value_table(self.rescale_factor, self.image_mean, self.image_std, self.do_normalize)
        return np.stack([table[channel][pixels[:, :, channel]] for channel in range(3)])


@functools.lru_cache(maxsize=8)
def _value_table(rescale: float, mean: tuple[float, ...], std: tuple[float, ...], normalize: bool) -> np.ndarray:
    """[3, 256]: the float32 each byte value of each channel becomes. A byte has 256 values, so a lookup gives
    the arithmetic's exact results for a fraction of its cost: scaled in float64, then float32 (the same rounding
    as the reference's processor), then normalised in float32."""
    values = np.broadcast_to((np.arange(256, dtype=np.float64) * rescale).astype(np.float32), (3, 256))
    if normalize:
        values = (values - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    return np.ascontiguousarray(values, dtype=np.float32)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is dropped, not composited, as in the reference."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL clips 16-bit values at 255 when converting (almost everything turns white); scale instead.
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0  # 0..1 floats are the common case
        gray = np.clip(np.nan_to_num(pixels) * scale, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    elif image.mode == "La":
        image = image.convert("LA")  # PIL has no direct path from premultiplied La to RGB
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert image mode {image.mode!r} to RGB: {err}") from None


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    """A per-channel value; a single number applies to all three channels."""
    if isinstance(value, int | float):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (one per RGB channel), got {list(values)}")
    return values  # type: ignore[return-value]
