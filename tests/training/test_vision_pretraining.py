"""The vision encoder's start: edge detectors in its patch embedding that tell an edge's orientation."""

from __future__ import annotations

import numpy as np
import pytest

from training.vision_pretraining import EDGE_ORIENTATIONS, edge_filters, start_with_edge_filters


def _hard_edge(patch: int, angle: float, offset: float, channel: int) -> np.ndarray:
    """A patch [3, P, P]: 1 on one side of the line through (centre + offset along the normal) at `angle`, 0 on the
    other, in one colour channel; a hard step, not the filters' smooth one."""
    centre = (patch - 1) / 2
    ys, xs = np.mgrid[0:patch, 0:patch] - centre
    out = np.zeros((3, patch, patch))
    out[channel] = (xs * np.cos(angle) + ys * np.sin(angle) > offset).astype(float)
    return out


def test_filters_are_zero_mean_unit_norm_and_one_channel_each():
    filters = edge_filters(8)
    assert filters.shape == (3 * EDGE_ORIENTATIONS * 2, 3, 8, 8)
    flat = filters.reshape(len(filters), -1)
    np.testing.assert_allclose(flat.sum(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 1.0, rtol=1e-5)
    assert ((np.abs(filters).sum(axis=(2, 3)) > 0).sum(axis=1) == 1).all()


@pytest.mark.parametrize("patch", [8, 16])
def test_the_strongest_filter_has_the_edge_orientation_and_channel(patch: int):
    """Exactly for an edge near a filter's offset; within one orientation step (22.5 degrees) for an edge
    anywhere across the patch."""
    filters = edge_filters(patch).reshape(3, EDGE_ORIENTATIONS, 2, -1)
    for channel in range(3):
        for k in range(EDGE_ORIENTATIONS):
            angle = np.pi * k / EDGE_ORIENTATIONS + 0.05  # a little off the filter's angle
            for offset, exact in ((-patch / 4 + 0.3, True), (patch / 4 - 0.2, True), (0.3, False),
                                  (-patch / 3, False)):
                response = np.abs(filters @ _hard_edge(patch, angle, offset, channel).reshape(-1))
                found_channel, found, _ = np.unravel_index(np.argmax(response), response.shape)
                steps_off = min((found - k) % EDGE_ORIENTATIONS, (k - found) % EDGE_ORIENTATIONS)
                assert found_channel == channel and steps_off <= (0 if exact else 1), (channel, k, offset, found)


def test_start_with_edge_filters_replaces_only_the_first_channels():
    from model.siglip import VisionTower
    from training.demo_config import demo_config

    tower = VisionTower(demo_config().vision)
    before = tower.vision_tower.patch_embed.proj.weight.numpy().copy()
    start_with_edge_filters(tower)
    after = tower.vision_tower.patch_embed.proj.weight.numpy()
    count = 3 * EDGE_ORIENTATIONS * 2
    np.testing.assert_array_equal(after[:count], edge_filters(before.shape[-1]))
    np.testing.assert_array_equal(after[count:], before[count:])
