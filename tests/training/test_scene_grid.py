"""Shapes on a grid (scenes.on_grid), measured in the rendered pixels: a square's four edges and a triangle's base
fall on the grid, every shape stays inside the picture, keeps its kind, colour and place and about its size."""

from __future__ import annotations

import numpy as np
import pytest

from training.judge import judge
from training.scenes import SIZE_RANGE, on_grid, random_scene, render

PIXELS, STEP = 64, 4


def _mostly_shape(scene, pixels: int) -> np.ndarray:
    """Pixels at least half covered by the shape: nearer its fill colour than the background's."""
    picture = np.asarray(render(scene, pixels), np.float32)
    to_fill = np.abs(picture - np.asarray(scene.fill, np.float32)).sum(axis=-1)
    to_ground = np.abs(picture - np.asarray(scene.ground, np.float32)).sum(axis=-1)
    return to_fill < to_ground


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """left, top, right, bottom, the last two one past the shape"""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@pytest.mark.parametrize("seed", range(40))
def test_square_edges_and_triangle_base_fall_on_the_grid(seed):
    rng = np.random.default_rng(seed)
    for shape in ("square", "triangle"):
        scene = on_grid(random_scene(rng, shape=shape, coloured_background=0.3), PIXELS, STEP)
        left, top, right, bottom = _box(_mostly_shape(scene, PIXELS))
        assert bottom % STEP == 0, (shape, bottom)
        if shape == "square":
            assert (left % STEP, top % STEP, right % STEP) == (0, 0, 0), (left, top, right)
            assert right - left == bottom - top


def test_a_grid_that_is_not_the_default_works_too():
    rng = np.random.default_rng(7)
    for _ in range(20):
        scene = on_grid(random_scene(rng, shape="square"), 96, 8)
        left, top, right, bottom = _box(_mostly_shape(scene, 96))
        assert {left % 8, top % 8, right % 8, bottom % 8} == {0}


def test_shapes_on_the_grid_stay_inside_and_keep_what_they_are():
    rng = np.random.default_rng(3)
    sides = []
    for _ in range(300):
        free = random_scene(rng, coloured_background=0.3)
        scene = on_grid(free, PIXELS, STEP)
        mask = _mostly_shape(scene, PIXELS)
        left, top, right, bottom = _box(mask)
        assert min(left, top) >= STEP - 1 and max(right, bottom) <= PIXELS - STEP + 1, (left, top, right, bottom)
        # the words still describe it: kind and colour as the independent judge sees them, size and place nearly
        verdict = judge(render(scene, PIXELS))
        assert (verdict.shape, verdict.colour) == (free.shape, free.colour)
        was = _box(_mostly_shape(free, PIXELS))
        moved = [abs((a + b) - (c + d)) / 2 for a, b, c, d in ((left, right, was[0], was[2]),
                                                              (top, bottom, was[1], was[3]))]
        assert max(moved) <= STEP, moved
        low, high = SIZE_RANGE[free.size]
        assert low * PIXELS - STEP / 2 <= scene.extent * PIXELS <= high * PIXELS + STEP / 2
        assert abs(scene.extent - free.extent) * PIXELS <= STEP / 2
        sides.append(round(scene.extent * PIXELS))
    # still varied: several sides for each size word
    assert len(set(sides)) >= 6
