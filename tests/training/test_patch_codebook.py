"""The k-means patch codebook: every flat colour it was trained on comes back exactly, and edges closely."""

from __future__ import annotations

import numpy as np

from training.patch_codebook import nearest, train_codebook
from training.scenes import random_scene, render


def test_nearest_is_the_brute_force_nearest():
    rng = np.random.default_rng(0)
    points, centroids = rng.random((500, 12), dtype=np.float32), rng.random((37, 12), dtype=np.float32)
    brute = ((points[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest(points, centroids), brute)


def test_codebook_keeps_flat_colours_exact_and_shapes_close():
    rng = np.random.default_rng(0)
    pictures = np.stack([np.asarray(render(random_scene(rng, coloured_background=0.0), 32)) for _ in range(200)])
    codebook = train_codebook(pictures, 128, 4, 8, rng, iterations=8)
    again = codebook.decode_blocky(codebook.encode(pictures))
    patches, rebuilt = codebook.patches(pictures), codebook.patches(again)
    flat = (patches == patches[:, :3].repeat(64, axis=0).reshape(patches.shape)).all(axis=1)
    assert flat.sum() > 1000  # the background and the shapes' insides
    exact = np.abs(rebuilt[flat] - patches[flat]).max(axis=1) <= 1.5 / 255
    assert exact.mean() > 0.97, exact.mean()  # rare colours of the shapes' insides may share a code
    white = flat & (patches == 1.0).all(axis=1)
    assert exact[white[flat]].all()
    error = np.abs(again.astype(np.float32) - pictures).mean()
    assert error < 6.0, error  # mean absolute error in levels, edges included
