"""Previews of images still being drawn: the token grid so far, decoded like a finished one, undrawn positions grey.

Image tokens are drawn in raster order over a `grid x grid` layout, one position of every image per step, and the
VQ decoder maps each position to a `cell x cell` block of pixels (cell = image size / grid). The decoder needs a
code at every position, so the undrawn tail gets a placeholder code; its pixels are painted grey afterwards. (Pixels
of drawn positions next to the tail still feel the placeholder through the decoder's convolutions: a preview is an
impression of the drawing so far, not a crop of the final image.)
"""

from __future__ import annotations

import numpy as np

GREY = 128
PLACEHOLDER_CODE = 0


def partial_tokens(drawn: np.ndarray, total: int) -> np.ndarray:
    """Token grids drawn so far [P, steps done] -> whole grids [P, total], the rest the placeholder code."""
    out = np.full((len(drawn), total), PLACEHOLDER_CODE, np.int64)
    out[:, :drawn.shape[1]] = drawn
    return out


def grey_undrawn(images: np.ndarray, steps_done: int, grid: int) -> np.ndarray:
    """uint8 [P, S, S, 3] with the blocks of the positions not yet drawn set to grey (in place; returns it)."""
    cell = images.shape[1] // grid
    row, col = divmod(steps_done, grid)
    images[:, row * cell:(row + 1) * cell, col * cell:] = GREY  # the rest of the row being drawn
    images[:, (row + 1) * cell:] = GREY  # the rows below it
    return images
