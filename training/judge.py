"""An evaluator of shape pictures that knows nothing of the model: numpy and Pillow only.

Given a picture of one shape on a plain background it says which colour, shape, background and place it sees:
- background: the median colour of the picture's border;
- the shape: the largest connected region of pixels far from the background colour;
- colour: the hue (and saturation, for white) of the shape's pixels, by hue ranges wide enough to take in
  common renderings of each name (Pillow's named colours included);
- shape: from the region's outline: how much of its bounding box it fills (square ~1, circle ~0.79, triangle
  ~0.5) and how its width changes from top to bottom (a triangle pointing up widens, a circle narrows at both
  ends, a square does not change);
- place: where the region's centre lies in a 3 x 3 division of the picture.
"""

from __future__ import annotations

import colorsys
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

MAX_SIDE = 128  # larger pictures are judged at this size
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that makes a pixel part of the shape
# hue ranges in degrees; red wraps around 0
HUES = (("red", 345, 15), ("orange", 15, 45), ("yellow", 45, 75), ("green", 75, 170), ("blue", 170, 255),
        ("purple", 255, 345))
PLACE_BINS = (("top", "", "bottom"), ("left", "", "right"))


@dataclass(frozen=True, slots=True)
class Verdict:
    colour: str | None  # None: no shape found
    shape: str | None
    background: str
    place: str | None
    fill: float = 0.0  # the region's share of its bounding box
    taper: float = 0.0  # width near the top over width near the bottom


def judge(picture: Image.Image | np.ndarray) -> Verdict:
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BOX)
    pixels = np.asarray(image, np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    ground = np.median(border, axis=0)
    far = np.sqrt(((pixels - ground) ** 2).sum(axis=-1)) > FOREGROUND_DISTANCE
    region = _largest_region(far)
    background = colour_name(ground)
    if region.sum() < max(6, 0.003 * region.size):
        return Verdict(None, None, background, None)
    colour = colour_name(np.median(pixels[region], axis=0))
    shape, fill, taper = _shape(region)
    return Verdict(colour, shape, background, _place(region), fill, taper)


def colour_name(rgb: np.ndarray) -> str:
    """A colour's name by hue; white (and light greys) by low saturation and high value."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    if s < 0.25 and v > 0.7:
        return "white"
    if v < 0.2:
        return "black"
    if s < 0.25:
        return "grey"
    degrees = h * 360
    for name, low, high in HUES:
        if (low <= degrees < high) if low < high else (degrees >= low or degrees < high):
            return name
    return "red"


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask."""
    H, W = mask.shape
    labels = np.zeros((H, W), np.int32)
    best, best_size, current = 0, 0, 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        current += 1
        labels[y, x] = current
        queue, size = deque([(y, x)]), 0
        while queue:
            cy, cx = queue.popleft()
            size += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def _shape(region: np.ndarray) -> tuple[str, float, float]:
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    height, width = bottom - top + 1, right - left + 1
    fill = float(region.sum() / (height * width))
    widths = region[top:bottom + 1].sum(axis=1).astype(np.float32)

    def width_at(fraction: float) -> float:
        return float(widths[min(height - 1, int(fraction * height))])

    taper = width_at(0.2) / max(width_at(0.8), 1.0)
    if taper < 0.6:
        return "triangle", fill, taper
    # a circle's rows shorten towards its top and bottom; a square's do not
    ends = (width_at(0.08) + width_at(0.92)) / (2 * max(width_at(0.5), 1.0))
    if fill > 0.88 or (fill > 0.83 and ends > 0.85):
        return "square", fill, taper
    return "circle", fill, taper


def _place(region: np.ndarray) -> str:
    ys, xs = np.nonzero(region)
    H, W = region.shape
    parts = []
    for centre, extent, names in ((ys.mean(), H, PLACE_BINS[0]), (xs.mean(), W, PLACE_BINS[1])):
        third = 0 if centre < 0.4 * extent else 2 if centre > 0.6 * extent else 1
        parts.append(names[third])
    vertical, horizontal = parts
    if not vertical and not horizontal:
        return "center"
    return " ".join(p for p in (vertical, horizontal) if p)
