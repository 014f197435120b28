"""bf16 weights as a published checkpoint stores them, and the check that a float32 product computed from them is
right: shared by the tests of the bf16-weight kernels."""

from __future__ import annotations

import numpy as np


def bf16_bits(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Random bf16 values as their bits (rounded to nearest even), like a published checkpoint stores them."""
    bits = (rng.standard_normal(shape) * scale).astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bits -> the float32 values they stand for (exact: bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def assert_float32_close(ours: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
    """Within float32 accumulation-order error of the exact product (float64 on the widened weights): a few units in
    the last place of the largest |x| @ |w| term, far below any real mistake (a lost row moves results by ~1/K)."""
    exact = x.astype(np.float64) @ w.astype(np.float64) + b
    scale = (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)).max()
    np.testing.assert_allclose(ours, exact, rtol=0, atol=4e-6 * scale)
