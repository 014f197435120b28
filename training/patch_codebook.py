"""The image tokenizer of the demo model: a k-means codebook of small picture patches.

A picture is cut into a grid of patches (at a reduced size); each patch's token is the index of its nearest
centroid. That is the whole encoder: serving never encodes pictures into image tokens, it only decodes them, and
the VQ decoder (trained afterwards, `decoder_training.py`) learns to turn a grid of tokens back into pixels.

Plain numpy: Lloyd's algorithm with k-means++ seeding, distances as one matrix product per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CHUNK = 8192  # patches per distance computation (a CHUNK x K matrix of float32)


@dataclass(frozen=True, slots=True)
class PatchCodebook:
    centroids: np.ndarray  # [K, patch * patch * 3] float32, pixels in [0, 1]
    grid: int  # patches per side of a picture
    patch: int  # pixels per patch side at the coding size (grid * patch)

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def coding_size(self) -> int:
        return self.grid * self.patch

    def encode(self, pictures: np.ndarray) -> np.ndarray:
        """uint8 pictures [N, S, S, 3] (any S) -> tokens [N, grid * grid], row by row."""
        patches = self.patches(pictures)
        return nearest(patches, self.centroids).reshape(len(pictures), self.grid * self.grid)

    def patches(self, pictures: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N * grid * grid, patch * patch * 3] at the coding size."""
        size = self.coding_size
        if pictures.shape[1] != size:
            pictures = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BOX))
                                 for p in pictures])
        N, g, p = len(pictures), self.grid, self.patch
        cut = pictures.reshape(N, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return cut.reshape(N * g * g, p * p * 3).astype(np.float32) / 255.0

    def decode_blocky(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [N, grid * grid] -> uint8 [N, coding size, coding size, 3]: the centroids pasted in place (what
        the tokens say, before any decoder smooths it)."""
        N, g, p = len(tokens), self.grid, self.patch
        cut = self.centroids[tokens].reshape(N, g, g, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return np.clip(cut.reshape(N, g * p, g * p, 3) * 255 + 0.5, 0, 255).astype(np.uint8)

    def save(self, path: Path) -> None:
        np.savez(path, centroids=self.centroids, grid=self.grid, patch=self.patch)

    @classmethod
    def load(cls, path: Path) -> PatchCodebook:
        data = np.load(path)
        return cls(data["centroids"], int(data["grid"]), int(data["patch"]))


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of each point."""
    squared = (centroids * centroids).sum(axis=1)
    out = np.empty(len(points), np.int64)
    for start in range(0, len(points), CHUNK):
        chunk = points[start:start + CHUNK]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change which c is nearest
        out[start:start + CHUNK] = np.argmin(squared[None, :] - 2.0 * chunk @ centroids.T, axis=1)
    return out


def train_codebook(pictures: np.ndarray, size: int, grid: int, patch: int, rng: np.random.Generator,
                   iterations: int = 25) -> PatchCodebook:
    """k-means over the patches of `pictures` (uint8 [N, S, S, 3]), computed on the distinct ones with their counts
    as weights (the same objective, far fewer points: flat patches of the background and of the shapes' insides
    make up most of a picture). Seeds come from the distinct patches, so the edges that give a shape its outline
    get their share of the codebook."""
    codebook = PatchCodebook(np.zeros((size, patch * patch * 3), np.float32), grid, patch)
    quantized = np.round(codebook.patches(pictures) * 255).astype(np.uint8)
    distinct, counts = np.unique(quantized, axis=0, return_counts=True)
    points, weights = distinct.astype(np.float32) / 255.0, counts.astype(np.float32)
    if len(points) < size:
        raise ValueError(f"{len(points)} distinct patches cannot make a codebook of {size}")
    centroids = _seed(points, size, rng)
    for _ in range(iterations):
        assigned = nearest(points, centroids)
        mass = np.bincount(assigned, weights=weights, minlength=size).astype(np.float32)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assigned, points * weights[:, None])
        alive = mass > 0
        centroids[alive] = sums[alive] / mass[alive, None]
        dead = np.flatnonzero(~alive)
        if len(dead):  # an empty cluster restarts at a point far from its centroid
            far = _distances(points, centroids, assigned)
            centroids[dead] = points[np.argsort(-far)[:len(dead)]]
    return PatchCodebook(centroids.astype(np.float32), grid, patch)


def _distances(points: np.ndarray, centroids: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    return ((points - centroids[assigned]) ** 2).sum(axis=1)


def _seed(points: np.ndarray, size: int, rng: np.random.Generator, sample: int = 20000) -> np.ndarray:
    """k-means++ on a sample of the points: each next centroid drawn with probability proportional to its squared
    distance from the nearest one chosen so far."""
    pool = points[rng.choice(len(points), min(sample, len(points)), replace=False)]
    chosen = [pool[rng.integers(len(pool))]]
    best = ((pool - chosen[0]) ** 2).sum(axis=1)
    for _ in range(size - 1):
        total = best.sum()
        index = rng.choice(len(pool), p=best / total) if total > 0 else rng.integers(len(pool))
        chosen.append(pool[index])
        best = np.minimum(best, ((pool - pool[index]) ** 2).sum(axis=1))
    return np.stack(chosen).astype(np.float32)
