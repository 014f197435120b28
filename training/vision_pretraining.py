"""Teaches the vision encoder to see shapes before it meets the language model.

Trained only through the language model's answers, the encoder learned colour (a patch's mean) but hardly any
geometry: a linear probe on its pooled features told circle, square and triangle apart 42% of the time (chance
33%), and the model named the right shape about as often. Two things fix that, both before the joint stage:

- the patch embedding starts with oriented edge detectors (`edge_filters`): a step edge at eight orientations
  and two offsets, in each colour channel, for 48 of its channels (the rest keep their random start), so that
  from the first step a patch says which way an edge through it runs, which is what separates a circle (every
  orientation), a square (two) and a triangle (three);
- a short supervised stage (`pretrain_vision`): the encoder's features, averaged over the patches, feed a linear
  head that is thrown away afterwards, trained to name each picture's shape, colour, size, place and background.

The pictures are the understanding examples' (`examples.varied_picture`: any size, sometimes not square, sometimes
JPEG) through the checkpoint's own image processor.
"""

from __future__ import annotations

from typing import TextIO

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from model.image_processing import ImageProcessor
from model.siglip import VisionTower
from training.examples import varied_picture
from training.optimisation import Progress, optimiser
from training.scenes import BACKGROUNDS, COLOURS, PLACES, SHAPES, SIZES, Scene, random_scene

# What the throwaway head names, in this order (scene attribute, its values).
LABELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", SIZES), ("place", tuple(PLACES)),
    ("background", BACKGROUNDS),
)
EDGE_ORIENTATIONS = 8
EDGE_SHARPNESS = 0.8  # pixels over which the template's step rises (tanh scale)


def edge_filters(patch: int, channels: int = 3) -> np.ndarray:
    """[channels * EDGE_ORIENTATIONS * 2, channels, patch, patch]: zero-mean unit-norm step-edge templates, one
    colour channel each, at eight orientations and two offsets from the patch's centre (a quarter patch either
    side, so that an edge anywhere across the patch meets one of them)."""
    centre = (patch - 1) / 2
    ys, xs = np.mgrid[0:patch, 0:patch] - centre
    out = []
    for channel in range(channels):
        for k in range(EDGE_ORIENTATIONS):
            angle = np.pi * k / EDGE_ORIENTATIONS
            for offset in (-patch / 4, patch / 4):
                step = np.tanh((xs * np.cos(angle) + ys * np.sin(angle) - offset) / EDGE_SHARPNESS)
                step -= step.mean()
                template = np.zeros((channels, patch, patch))
                template[channel] = step / np.linalg.norm(step)
                out.append(template)
    return np.stack(out).astype(np.float32)


def start_with_edge_filters(vision: VisionTower) -> None:
    """The first channels of the patch embedding become `edge_filters` (the others keep their values)."""
    weight = vision.vision_tower.patch_embed.proj.weight
    value = weight.numpy()
    filters = edge_filters(value.shape[-1], value.shape[1])
    if len(filters) > len(value):
        raise ValueError(f"{len(filters)} edge filters do not fit a patch embedding of width {len(value)}")
    value[:len(filters)] = filters
    weight.set_value(value)


def labels(scenes: list[Scene]) -> list[np.ndarray]:
    return [np.array([values.index(getattr(s, name)) for s in scenes], np.int64) for name, values in LABELS]


def pretrain_vision(vision: VisionTower, processor: ImageProcessor, steps: int, batch: int,
                    rng: np.random.Generator, peak_lr: float = 2e-3, log: TextIO | None = None) -> list[dict]:
    """Train `vision` to name every picture's attributes from its mean feature; returns the loss log (the shape
    loss and the total over all attributes)."""
    width = vision.vision_tower.pos_embed.shape[-1]
    head = nn.Linear(width, sum(len(values) for _, values in LABELS))
    # Glorot-uniform: with a head of GPT-2's N(0, 0.02) the shape loss stayed at chance for 250 steps (the encoder's
    # gradient comes through the head's weights); with this it fell from the first hundred
    bound = float(np.sqrt(6.0 / sum(head.weight.shape)))
    head.weight.set_value(rng.uniform(-bound, bound, head.weight.shape).astype(np.float32))
    head.bias.set_value(np.zeros(head.bias.shape, np.float32))
    opt, schedule = optimiser([*vision.parameters(), *head.parameters()], steps, peak_lr,
                              warmup=max(1, steps // 20))
    progress = Progress("vision", steps, log=log)
    vision.train()
    for step in range(steps):
        scenes = [random_scene(rng, coloured_background=0.3, jitter_colours=rng.random() < 0.7)
                  for _ in range(batch)]
        pixels = np.stack([processor([varied_picture(s, rng)])[0] for s in scenes])
        logits = head(vision(paddle.to_tensor(pixels)).mean(axis=1))
        losses, first = [], 0
        for (_, values), target in zip(LABELS, labels(scenes), strict=True):
            part = logits[:, first:first + len(values)]
            losses.append(F.cross_entropy(part, paddle.to_tensor(target)[:, None]))
            first += len(values)
        total = paddle.add_n(losses)
        total.backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        progress.update(step, shape=float(losses[0]), total=float(total))
    vision.eval()
    return progress.history
