"""The synthetic world the demo model learns: one filled shape on a plain background, and the words for it.

A `Scene` says what a picture holds (shape, colour, size, place, background) and, for rendering, exactly where.
`render` draws it anti-aliased with Pillow (drawn at four times the size, then reduced). `caption` and the
question/answer pairs describe it in a small English grammar that the tokenizer, the generation prompts and the
understanding answers all share.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
# Canonical colours (the generated images use these); understanding pictures vary around them (`jittered`).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 35),
    "green": (40, 165, 60),
    "blue": (35, 80, 215),
    "purple": (135, 50, 185),
}
WHITE = (255, 255, 255)
BACKGROUNDS = ("white", *COLOURS)
SIZES = ("small", "medium", "large")
# Relative side (or diameter) of the shape for each size word, as a fraction of the picture's side.
SIZE_RANGE = {"small": (0.24, 0.32), "medium": (0.38, 0.48), "large": (0.56, 0.70)}
# The nine places, by the centre of the shape in fractions of the picture (x, y).
PLACES: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27), "top": (0.5, 0.27), "top right": (0.73, 0.27),
    "left": (0.27, 0.5), "center": (0.5, 0.5), "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73), "bottom": (0.5, 0.73), "bottom right": (0.73, 0.73),
}
# How each place is said after "is" / in a caption.
PLACE_PHRASES = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}


@dataclass(frozen=True, slots=True)
class Scene:
    shape: str
    colour: str
    size: str
    place: str
    background: str = "white"
    # rendering detail: centre (fractions of the side), extent (fraction of the side) and the exact fill colour
    cx: float = 0.5
    cy: float = 0.5
    extent: float = 0.4
    fill: tuple[int, int, int] = (0, 0, 0)
    ground: tuple[int, int, int] = WHITE


def colour_rgb(name: str) -> tuple[int, int, int]:
    return WHITE if name == "white" else COLOURS[name]


def fits(size: str, place: str) -> bool:
    """Large shapes only fit the middle row and column; corners take small ones."""
    x, y = PLACES[place]
    off_centre = (x != 0.5) + (y != 0.5)
    return {"small": True, "medium": off_centre < 2, "large": off_centre == 0}[size]


def random_scene(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None,
                 size: str | None = None, place: str | None = None, background: str | None = None,
                 coloured_background: float = 0.25, jitter_colours: bool = False) -> Scene:
    """A scene with the given attributes and the rest drawn at random (a coloured background with probability
    `coloured_background`). `jitter_colours`: the fill and ground vary in hue, saturation and value around the
    named colours, as pictures from elsewhere do."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    if background is None:
        others = [c for c in COLOURS if c != colour]
        background = others[rng.integers(len(others))] if rng.random() < coloured_background else "white"
    while True:
        s = size or SIZES[rng.integers(len(SIZES))]
        p = place or list(PLACES)[rng.integers(len(PLACES))]
        if fits(s, p):
            break
        if size and place:
            raise ValueError(f"a {size} shape does not fit {PLACE_PHRASES[place]}")
    low, high = SIZE_RANGE[s]
    extent = float(rng.uniform(low, high))
    x, y = PLACES[p]
    # Stay near the named place, and inside the picture.
    margin = extent / 2 + 0.03
    cx = float(np.clip(x + rng.uniform(-0.05, 0.05), margin, 1 - margin))
    cy = float(np.clip(y + rng.uniform(-0.05, 0.05), margin, 1 - margin))
    fill, ground = colour_rgb(colour), colour_rgb(background)
    if jitter_colours:
        fill = jittered(fill, rng)
        ground = ground if background == "white" and rng.random() < 0.7 else jittered(ground, rng, light=True)
    return Scene(shape, colour, s, p, background, cx, cy, extent, fill, ground)


def on_grid(scene: Scene, pixels: int, step: int) -> Scene:
    """The scene with its shape's bounding box moved and sized to whole multiples of `step` pixels in a picture of
    `pixels` (a triangle: its sides and its base), as near as the grid allows and inside the picture.

    Why: the demo model draws 8 x 8 pixel image tokens one after another, and a straight edge that may fall at any
    pixel of a token asks the small language model to keep the same offset in every token along it; on a 4-pixel
    grid an edge falls at one of two places in a token, so far fewer tokens say "edge" and neighbours agree."""
    side = max(step, round(scene.extent * pixels / step) * step)
    height = side * math.sqrt(3) / 2 if scene.shape == "triangle" else side
    lowest, highest = step, pixels - step - side
    left = min(max(round((scene.cx * pixels - side / 2) / step) * step, lowest), highest)
    # the bottom edge is the one on the grid (a triangle's base; for the others the same as the top)
    low_v, high_v = step + math.ceil(height / step) * step, pixels - step
    bottom = min(max(round((scene.cy * pixels + height / 2) / step) * step, low_v), high_v)
    return replace(scene, cx=(left + side / 2) / pixels, cy=(bottom - height / 2) / pixels, extent=side / pixels)


def jittered(rgb: tuple[int, int, int], rng: np.random.Generator, light: bool = False) -> tuple[int, int, int]:
    """The colour moved a little in hue, saturation and value (white stays near white)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if s < 0.05:  # white: a light grey or cream
        out = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.06), rng.uniform(0.9, 1.0))
    else:
        h = (h + rng.uniform(-0.022, 0.022)) % 1.0
        s = float(np.clip(s * rng.uniform(0.75, 1.1), 0.45, 1.0))
        v = float(np.clip(v * rng.uniform(0.8, 1.1), 0.55 if not light else 0.7, 1.0))
        out = colorsys.hsv_to_rgb(h, s, v)
    return tuple(int(round(c * 255)) for c in out)  # type: ignore[return-value]


def render(scene: Scene, width: int, height: int | None = None, supersample: int = 4) -> Image.Image:
    """The scene as an RGB picture, anti-aliased. A non-square picture keeps the shape's proportions: places and
    sizes are fractions of the shorter side, measured from the centre."""
    height = height or width
    W, H = width * supersample, height * supersample
    side = min(W, H)
    image = Image.new("RGB", (W, H), scene.ground)
    draw = ImageDraw.Draw(image)
    cx = W / 2 + (scene.cx - 0.5) * side
    cy = H / 2 + (scene.cy - 0.5) * side
    r = scene.extent * side / 2
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=scene.fill)
    elif scene.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=scene.fill)
    elif scene.shape == "triangle":
        # equilateral, pointing up, centred on its bounding box
        half = r
        h = half * math.sqrt(3)
        top, bottom = cy - h / 2, cy + h / 2
        draw.polygon([(cx, top), (cx + half, bottom), (cx - half, bottom)], fill=scene.fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image.resize((width, height), Image.Resampling.BOX)


# words


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene, *, size: bool = False, place: bool = False, background: bool | None = None) -> str:
    """"a red circle", "a small blue square in the top left corner", "a green triangle on a yellow background".
    background None: named when it is not white."""
    words = [scene.size] if size else []
    words += [scene.colour, scene.shape]
    text = f"{article(words[0])} {' '.join(words)}"
    if place:
        text += f" {PLACE_PHRASES[scene.place]}"
    if background or (background is None and scene.background != "white"):
        text += f" on {article(scene.background)} {scene.background} background"
    return text


# Generation prompts: a caption, sometimes with a lead-in, as people type them.
PROMPT_LEADS = ("", "", "", "", "a picture of ", "an image of ", "draw ")


def prompt_for(scene: Scene, rng: np.random.Generator) -> str:
    """A generation prompt that the scene satisfies: the colour and shape always, the size, place and background
    sometimes (a white background is sometimes said, a coloured one always)."""
    text = caption(scene, size=rng.random() < 0.4, place=rng.random() < 0.4,
                   background=True if scene.background != "white" else rng.random() < 0.1)
    return PROMPT_LEADS[rng.integers(len(PROMPT_LEADS))] + text


# Understanding: questions and the answers the model learns to give.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "describe": ("What is in this picture?", "What is in the picture?", "Describe the image.",
                 "What do you see?", "Describe this picture."),
    "colour": ("What colour is the shape?", "What color is the shape?", "What colour is it?", "What color is it?"),
    "shape": ("What shape is it?", "What shape is this?", "Which shape is it?"),
    "place": ("Where is it?", "Where is the shape?"),
    "size": ("How big is it?", "How big is the shape?"),
    "background": ("What colour is the background?", "What color is the background?"),
}


def answer(scene: Scene, topic: str) -> str:
    if topic == "describe":
        return f"{caption(scene, background=True).capitalize()}."
    if topic == "colour":
        return f"It is {scene.colour}."
    if topic == "shape":
        return f"It is {article(scene.shape)} {scene.shape}."
    if topic == "place":
        return f"It is {PLACE_PHRASES[scene.place]}."
    if topic == "size":
        return f"It is {scene.size}."
    if topic == "background":
        return f"The background is {scene.background}."
    raise ValueError(f"unknown topic {topic!r}")


def question_for(topic: str, rng: np.random.Generator) -> str:
    options = QUESTIONS[topic]
    return options[rng.integers(len(options))]


def corpus_lines() -> list[str]:
    """Every word and phrase of the grammar, for the demo tokenizer's training text."""
    lines = []
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for colour in COLOURS:
            for size in SIZES:
                for place in PLACES:
                    if not fits(size, place):
                        continue
                    scene = random_scene(rng, shape=shape, colour=colour, size=size, place=place)
                    lines.append(caption(scene, size=True, place=True, background=True))
                    lines += [answer(scene, topic) for topic in QUESTIONS]
    lines += [q for options in QUESTIONS.values() for q in options]
    lines += [lead + "a red circle" for lead in PROMPT_LEADS if lead]
    return lines
