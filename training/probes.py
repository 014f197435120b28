"""Pictures for measuring the demo model, drawn independently of the training data (`scenes.render`).

Pillow's own named colours (CSS's "red", "orange", ..., not the training palette), sizes other than the vision
input's, some not square, some drawn at twice the size and reduced with Lanczos, some saved as JPEG: what a user
might upload. Deterministic from the seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageDraw

PROBE_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
PROBE_SHAPES = ("circle", "square", "triangle")
# CSS shades that people also call by these names
SHADES = {"red": ("red", "crimson", "firebrick"), "orange": ("orange", "darkorange"),
          "yellow": ("yellow", "gold"), "green": ("green", "forestgreen", "limegreen"),
          "blue": ("blue", "royalblue", "dodgerblue"), "purple": ("purple", "darkviolet", "mediumorchid")}


@dataclass(frozen=True, slots=True)
class Probe:
    picture: Image.Image
    colour: str
    shape: str
    background: str
    how: str  # how it was drawn, for reports


def probe(colour: str, shape: str, rng: np.random.Generator, background: str = "white") -> Probe:
    width = int(rng.integers(48, 320))
    height = width if rng.random() < 0.7 else int(width * rng.uniform(0.7, 1.4))
    doubled = rng.random() < 0.4
    scale = 2 if doubled else 1
    W, H = width * scale, height * scale
    shades = SHADES[colour]
    fill = ImageColor.getrgb(shades[int(rng.integers(len(shades)))])
    ground = ImageColor.getrgb(background)
    image = Image.new("RGB", (W, H), ground)
    draw = ImageDraw.Draw(image)
    side = min(W, H)
    extent = rng.uniform(0.3, 0.6) * side
    cx = rng.uniform(extent / 2 + 2, W - extent / 2 - 2)
    cy = rng.uniform(extent / 2 + 2, H - extent / 2 - 2)
    r = extent / 2
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        h = r * 1.7
        draw.polygon([(cx, cy - h / 2), (cx + r, cy + h / 2), (cx - r, cy + h / 2)], fill=fill)
    how = [f"{width}x{height}"]
    if doubled:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        how.append("drawn at 2x")
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        quality = int(rng.integers(40, 90))
        image.save(buffer, format="JPEG", quality=quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        how.append(f"JPEG q{quality}")
    return Probe(image, colour, shape, background, ", ".join(how))


def probes(count_per_kind: int, seed: int) -> list[Probe]:
    """`count_per_kind` pictures of every colour and shape, on white."""
    rng = np.random.default_rng(seed)
    return [probe(colour, shape, rng) for colour in PROBE_COLOURS for shape in PROBE_SHAPES
            for _ in range(count_per_kind)]
