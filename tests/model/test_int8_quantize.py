"""Quantizing a weight to int8 with a scale per output column for each group of weight rows."""

from __future__ import annotations

import numpy as np
import pytest

from model.cpu_kernels import int8
from tests.model.bf16_values import bf16_bits, bf16_to_float32


def _heavy_tailed(rng: np.random.Generator, K: int, N: int) -> np.ndarray:
    """Weights like a trained layer's: mostly small, a few outliers per column (which is what groups are for)."""
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.02
    outliers = rng.random((K, N)) < 0.002
    w[outliers] *= 40
    return w


@pytest.mark.parametrize(("K", "group"), [(1064, 64), (300, 64), (40, 8), (300, 304), (7, 8)])
def test_quantize_keeps_every_weight_within_half_a_step_of_its_group_scale(K, group):
    """K = 1064 ends in a part group;
    group 304 >= K is one scale per column."""
    rng = np.random.default_rng(K + group)
    w = _heavy_tailed(rng, K, 37)
    q, scales = int8.quantize(w, group)
    assert q.dtype == np.int8 and q.shape == (K, 37)
    assert scales.dtype == np.float32 and scales.shape == (-(-K // group), 37)
    assert q.min() >= -127  # symmetric: -128 never appears
    for g in range(scales.shape[0]):
        block = w[g * group:(g + 1) * group].astype(np.float64)
        expected = np.abs(block).max(axis=0) / 127
        np.testing.assert_allclose(scales[g], expected, rtol=1e-6)
        error = np.abs(q[g * group:(g + 1) * group] * scales[g].astype(np.float64) - block)
        assert (error <= scales[g] * 0.5 * (1 + 1e-5) + 1e-12).all()
        # the largest weight of each column keeps its value: its q is +-127
        assert (np.abs(q[g * group:(g + 1) * group]).max(axis=0) == 127).all()


def test_smaller_groups_give_smaller_errors_on_weights_with_outliers():
    rng = np.random.default_rng(1)
    w = _heavy_tailed(rng, 2048, 256)
    errors = []
    for group in (32, 64, 128, 2048):
        q, scales = int8.quantize(w, group)
        errors.append(np.sqrt(np.mean((int8.dequantize(q, scales, group) - w) ** 2)))
    assert errors == sorted(errors)
    assert errors[0] < 0.7 * errors[-1]


def test_a_group_of_zeros_has_scale_zero_and_stays_zero():
    w = np.zeros((24, 5), np.float32)
    w[16:, 2] = [1, -2, 3, 0, 0, 0, 0, 0.5]
    q, scales = int8.quantize(w, 8)
    assert not np.isnan(scales).any()
    assert (scales[:2] == 0).all() and (q[:16] == 0).all()
    np.testing.assert_allclose(int8.dequantize(q, scales, 8)[16:, 2], w[16:, 2], atol=3 / 254)


def test_bf16_bits_quantize_as_the_float32_values_they_stand_for():
    rng = np.random.default_rng(2)
    bits = bf16_bits(rng, 100, 30, scale=0.05)
    q_bits, s_bits = int8.quantize(bits, 32)
    q_float, s_float = int8.quantize(bf16_to_float32(bits), 32)
    np.testing.assert_array_equal(q_bits, q_float)
    np.testing.assert_array_equal(s_bits, s_float)


def test_quantize_leaves_its_input_unchanged():
    rng = np.random.default_rng(3)
    w = _heavy_tailed(rng, 64, 8)
    before = w.copy()
    int8.quantize(w, 16)
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("group", [0, -8, 12])
def test_a_group_that_is_not_a_positive_multiple_of_8_is_refused(group):
    with pytest.raises(ValueError, match="multiple of 8"):
        int8.quantize(np.ones((16, 4), np.float32), group)


def test_a_weight_quantized_in_chunks_matches_one_quantized_whole(monkeypatch):
    """quantize() converts a few groups of rows to float32 at a time: the chunks' seams change nothing."""
    rng = np.random.default_rng(4)
    w = _heavy_tailed(rng, 1000, 24)
    whole = int8.quantize(w, 32)
    monkeypatch.setattr(int8, "_CHUNK_FLOATS", 24 * 96)  # three groups of 32 rows per chunk
    chunked = int8.quantize(w, 32)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])


@pytest.mark.parametrize("K", [1, 2, 7, 64])
def test_pair_rows_interleaves_two_rows_column_by_column_and_leaves_an_odd_last_row_alone(K):
    """The layout the kernels read (int8_pairs.h), checked byte by byte: q[k, n] of a pair at (k - k % 2) * N + 2n +
    k % 2; an odd K's last row at (K - 1) * N + n; and unpair_rows undoes it."""
    N = 5
    q = np.random.default_rng(K).integers(-127, 128, size=(K, N), dtype=np.int8)
    held = int8.pair_rows(q)
    assert held.shape == (K, N) and held.dtype == np.int8
    flat = held.ravel()
    for k in range(K):
        for n in range(N):
            at = k * N + n if K % 2 and k == K - 1 else (k - k % 2) * N + 2 * n + k % 2
            assert flat[at] == q[k, n], (k, n)
    np.testing.assert_array_equal(int8.unpair_rows(held), q)
