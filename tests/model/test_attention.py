"""The fused CPU attention kernels against Paddle's own ops (the reference path) and, for paged attention, against
a plain numpy computation over contiguous rows; and how the kernels are built."""

from __future__ import annotations

import logging

import numpy as np
import paddle
import pytest

from model import cpu_kernels
from model.attention import WINDOW_MAX_POSITIONS, paged_attention, prompt_attention
from model.kv_cache import RowBatch


@pytest.fixture
def paddle_ops(monkeypatch):
    """Run the body through Paddle's ops instead of the kernels."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setenv("JANUS_CPU_KERNELS", "off")
            return fn(*args, **kwargs).numpy()

    return run


def _tensor(rng: np.random.Generator, *shape: int) -> paddle.Tensor:
    return paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))


def test_kernels_are_in_use_for_the_suite():
    # tests/conftest.py asks for them (JANUS_CPU_KERNELS=require): a failed build fails here, loudly
    assert cpu_kernels.mode() == "require"
    assert cpu_kernels.library() is not None


@pytest.mark.parametrize(("B", "T", "H", "KVH", "D"), [
    (1, 5, 4, 4, 16),  # shorter than one 16-key tile
    (3, 37, 4, 4, 16),
    (2, 70, 4, 2, 32),  # grouped-query attention
    (2, 33, 8, 1, 64),  # one key/value head for all
    (1, 130, 2, 2, 8),
])
def test_causal_prompt_with_left_padding_matches_paddle(paddle_ops, kernel_build, B, T, H, KVH, D):
    rng = np.random.default_rng(T)
    q, k, v = _tensor(rng, B, T, H, D), _tensor(rng, B, T, KVH, D), _tensor(rng, B, T, KVH, D)
    starts = np.array([0] + [int(rng.integers(1, T)) for _ in range(B - 1)])
    fused = prompt_attention(q, k, v, starts, causal=True).numpy()
    reference = paddle_ops(prompt_attention, q, k, v, starts, causal=True)
    assert fused.shape == (B, T, H * D)
    np.testing.assert_allclose(fused, reference, atol=2e-6, rtol=0)


def test_padding_query_attends_to_itself_only(kernel_build):
    rng = np.random.default_rng(1)
    q, k, v = _tensor(rng, 1, 6, 2, 8), _tensor(rng, 1, 6, 2, 8), _tensor(rng, 1, 6, 2, 8)
    out = prompt_attention(q, k, v, np.array([3]), causal=True).numpy().reshape(6, 2, 8)
    np.testing.assert_allclose(out[:3], v.numpy()[0, :3], atol=0)


def test_real_queries_never_see_padding_keys(kernel_build):
    rng = np.random.default_rng(2)
    q, k, v = _tensor(rng, 1, 9, 2, 16), _tensor(rng, 1, 9, 2, 16), _tensor(rng, 1, 9, 2, 16)
    before = prompt_attention(q, k, v, np.array([4]), causal=True).numpy()
    k_changed, v_changed = k.numpy().copy(), v.numpy().copy()
    k_changed[:, :4] = 50.0
    v_changed[:, :4] = -50.0
    after = prompt_attention(q, paddle.to_tensor(k_changed), paddle.to_tensor(v_changed), np.array([4]),
                             causal=True).numpy()
    np.testing.assert_allclose(after[:, 4:], before[:, 4:], atol=1e-6)


def test_full_attention_over_strided_views_matches_paddle(paddle_ops, kernel_build):
    # the vision encoder's layout: q, k and v are views into one [B, N, 3, H, D] projection
    rng = np.random.default_rng(3)
    qkv = _tensor(rng, 2, 50, 3, 4, 16)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    fused = prompt_attention(q, k, v, None, causal=False).numpy()
    reference = paddle_ops(prompt_attention, q, k, v, None, causal=False)
    np.testing.assert_allclose(fused, reference, atol=2e-6, rtol=0)


def test_large_scores_stay_finite(kernel_build):
    rng = np.random.default_rng(4)
    q = paddle.to_tensor(rng.standard_normal((1, 20, 2, 16)).astype(np.float32) * 100)
    k = paddle.to_tensor(rng.standard_normal((1, 20, 2, 16)).astype(np.float32) * 100)
    out = prompt_attention(q, k, _tensor(rng, 1, 20, 2, 16), None, causal=True).numpy()
    assert np.isfinite(out).all()


# paged attention: against a plain numpy computation over each row's contiguous history

def _paged_case(rng: np.random.Generator, lengths: list[int], T: int, H: int, KVH: int, D: int, block_size: int,
                ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor, RowBatch, list[np.ndarray], list[np.ndarray]]:
    """Rows whose last min(T, length) positions are new (left-padded to T), their blocks scattered over a pool
    with spare blocks in between. Returns q, the pools, the rows, and each row's contiguous keys/values."""
    need = [-(-n // block_size) for n in lengths]
    ids = rng.permutation(sum(need) + 7)  # shuffled, with blocks no row uses
    pool_k = rng.standard_normal((len(ids), KVH, block_size, D)).astype(np.float32)
    pool_v = rng.standard_normal((len(ids), KVH, block_size, D)).astype(np.float32)
    tables, cached, pad, keys, values = [], [], [], [], []
    for n, count in zip(lengths, need, strict=True):
        table, ids = ids[:count].tolist(), ids[count:]
        tables.append(table)
        new = min(T, n)
        cached.append(n - new)
        pad.append(T - new)
        j = np.arange(n)
        block, offset = np.asarray(table)[j // block_size], j % block_size
        keys.append(pool_k[block, :, offset])  # [n, KVH, D]
        values.append(pool_v[block, :, offset])
    q = rng.standard_normal((len(lengths), T, H, D)).astype(np.float32)
    return (paddle.to_tensor(q), paddle.to_tensor(pool_k), paddle.to_tensor(pool_v), RowBatch.of(tables, cached, pad),
            keys, values)


def _numpy_paged(q: np.ndarray, rows: RowBatch, keys: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
    B, T, H, D = q.shape
    out = np.zeros((B, T, H, D), np.float64)
    for b in range(B):
        group = H // keys[b].shape[1]
        for t in range(rows.pad[b], T):
            seen = rows.cached[b] + t - rows.pad[b] + 1
            for h in range(H):
                k, v = keys[b][:seen, h // group], values[b][:seen, h // group]
                scores = k.astype(np.float64) @ q[b, t, h] * D**-0.5
                weights = np.exp(scores - scores.max())
                out[b, t, h] = weights @ v / weights.sum()
    return out.reshape(B, T, H * D)


@pytest.mark.parametrize(("lengths", "T", "H", "KVH", "D", "block_size"), [
    ([1, 37, 130], 1, 4, 4, 16, 16),  # decode: rows of very different lengths
    ([5, 64, 200, 17, 90], 1, 8, 2, 32, 8),  # decode, grouped-query attention
    ([9, 33, 70], 9, 4, 2, 16, 16),  # prefill after a cached prefix (the first row has none), left-padded
    ([40, 3, 129], 40, 2, 1, 64, 16),  # whole prompts of different lengths
    ([130, 131], 3, 4, 4, 8, 32),  # a few positions at once (several draft tokens) ending mid-block
    ([23, 7, 41], 3, 4, 2, 40, 5),  # odd blocks (every other one starts at an odd key), D not a multiple of 32
])
def test_paged_attention_equals_attention_over_contiguous_rows(paddle_ops, kernel_build, lengths, T, H, KVH, D,
                                                               block_size):
    rng = np.random.default_rng(sum(lengths) + T)
    q, pool_k, pool_v, rows, keys, values = _paged_case(rng, lengths, T, H, KVH, D, block_size)
    expected = _numpy_paged(q.numpy(), rows, keys, values)
    fused = paged_attention(q, pool_k, pool_v, rows).numpy()
    fallback = paddle_ops(paged_attention, q, pool_k, pool_v, rows)
    assert fused.shape == (len(lengths), T, H * D)
    np.testing.assert_allclose(fused, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(fallback, expected, atol=2e-5, rtol=0)


def test_long_contexts_in_a_window_match_float64(kernel_build):
    """Rows of 8,200 positions appending a window of 16: a unit of all eight heads would hold 16 x 8 x 8,200 scores
    (more than its 4 MiB), so units take fewer heads; their outputs are still the attention of each query."""
    rng = np.random.default_rng(5)
    q, pool_k, pool_v, rows, keys, values = _paged_case(rng, [8200, 8190, 8203, 8200], WINDOW_MAX_POSITIONS, 8, 8, 8,
                                                        16)
    expected = _numpy_paged(q.numpy(), rows, keys, values)
    np.testing.assert_allclose(paged_attention(q, pool_k, pool_v, rows).numpy(), expected, atol=2e-5, rtol=0)


def _shared_prompt_case(rng: np.random.Generator, rows: int, prompt: int, T: int, H: int, D: int, block_size: int,
                        ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor, RowBatch, list[np.ndarray],
                                   list[np.ndarray]]:
    """Rows that share a prompt's whole blocks, as a generation's rows do, then hold blocks of their own (a copy of
    the prompt's part-filled last block, the positions written since, and T new ones, of different counts per
    row). Returns what `_paged_case` does."""
    shared = prompt // block_size
    own_positions = [prompt - shared * block_size + 3 * r + T for r in range(rows)]
    own_blocks = [-(-n // block_size) for n in own_positions]
    ids = rng.permutation(shared + sum(own_blocks) + 5)
    pool_k = rng.standard_normal((len(ids), H, block_size, D)).astype(np.float32)
    pool_v = rng.standard_normal((len(ids), H, block_size, D)).astype(np.float32)
    prompt_table, ids = ids[:shared].tolist(), ids[shared:]
    tables, cached, keys, values = [], [], [], []
    for count, n_own in zip(own_blocks, own_positions, strict=True):
        table, ids = prompt_table + ids[:count].tolist(), ids[count:]
        n = shared * block_size + n_own
        tables.append(table)
        cached.append(n - T)
        j = np.arange(n)
        block, offset = np.asarray(table)[j // block_size], j % block_size
        keys.append(pool_k[block, :, offset])
        values.append(pool_v[block, :, offset])
    width = max(len(t) for t in tables)
    tables = [t + [0] * (width - len(t)) for t in tables]
    q = rng.standard_normal((rows, T, H, D)).astype(np.float32)
    return (paddle.to_tensor(q), paddle.to_tensor(pool_k), paddle.to_tensor(pool_v), RowBatch.of(tables, cached),
            keys, values)


@pytest.mark.parametrize("T", [1, 2, 4, 8, WINDOW_MAX_POSITIONS, WINDOW_MAX_POSITIONS + 1])
def test_rows_sharing_a_prompt_and_appending_a_window_match_float64(paddle_ops, kernel_build, T):
    """Decode steps (T = 1) and windows of drafted tokens (each row appends T positions, each attending causally
    within the window) over blocks the rows share: in place up to WINDOW_MAX_POSITIONS, gathered above."""
    rng = np.random.default_rng(T)
    q, pool_k, pool_v, rows, keys, values = _shared_prompt_case(rng, 5, 37, T, 4, 32, 16)
    expected = _numpy_paged(q.numpy(), rows, keys, values)
    np.testing.assert_allclose(paged_attention(q, pool_k, pool_v, rows).numpy(), expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(paddle_ops(paged_attention, q, pool_k, pool_v, rows), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("T", [1, 4])
def test_a_rows_attention_does_not_depend_on_the_other_rows(kernel_build, T):
    """The same bits for a row attended alone and among others (threads split the rows and heads differently)."""
    rng = np.random.default_rng(20 + T)
    q, pool_k, pool_v, rows, _, _ = _shared_prompt_case(rng, 6, 50, T, 4, 64, 16)
    together = paged_attention(q, pool_k, pool_v, rows).numpy()
    for b in range(6):
        alone = RowBatch.of([rows.tables[b].tolist()], [int(rows.cached[b])])
        np.testing.assert_array_equal(paged_attention(q[b:b + 1], pool_k, pool_v, alone).numpy()[0], together[b])


@pytest.mark.parametrize("shared", [False, True])
def test_a_window_gives_the_bits_of_one_decode_step_per_position(kernel_build, shared):
    """What makes speculative decoding exact: each query of a window (several positions a row, grouped query
    heads, rows holding the same blocks: queries a kernel may well compute side by side) comes out bit for bit as
    the decode step of its position alone. Blocks of 5 (every other one starting at an odd key) and D 40 take the
    tails of every loop."""
    rng = np.random.default_rng(31 + shared)
    T = 6
    if shared:  # six rows on one prompt's blocks: queries of several rows together
        q, pool_k, pool_v, rows, _, _ = _shared_prompt_case(rng, 6, 50, T, 4, 40, 5)
    else:  # rows of their own with two query heads per key head
        q, pool_k, pool_v, rows, _, _ = _paged_case(rng, [23, 41, 60], T, 8, 4, 40, 5)
    window = paged_attention(q, pool_k, pool_v, rows).numpy()
    tables = [table.tolist() for table in rows.tables]
    for t in range(T):
        step = RowBatch.of(tables, [int(c) + t for c in rows.cached])
        np.testing.assert_array_equal(paged_attention(q[:, t:t + 1], pool_k, pool_v, step).numpy()[:, 0],
                                      window[:, t], err_msg=f"position {t}")


def test_paged_attention_reads_only_the_rows_own_positions(kernel_build):
    # a row never sees positions past its length, nor blocks that are not in its table
    rng = np.random.default_rng(11)
    q, pool_k, pool_v, rows, _, _ = _paged_case(rng, [20, 45], 1, 4, 4, 16, 16)
    before = paged_attention(q, pool_k, pool_v, rows).numpy()
    k, v = pool_k.numpy(), pool_v.numpy()
    used = set(rows.tables[0, :2].tolist()) | set(rows.tables[1, :3].tolist())
    spare = [i for i in range(len(k)) if i not in used]
    k[spare], v[spare] = 1e4, -1e4
    k[rows.tables[0, 1], :, 4:], v[rows.tables[0, 1], :, 4:] = 1e4, -1e4  # row 0 holds positions 16..19 of it
    after = paged_attention(q, paddle.to_tensor(k), paddle.to_tensor(v), rows).numpy()
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_head_dim_not_a_multiple_of_8_uses_paddle(paddle_ops):
    rng = np.random.default_rng(6)
    q, k, v = _tensor(rng, 1, 7, 2, 12), _tensor(rng, 1, 7, 2, 12), _tensor(rng, 1, 7, 2, 12)
    np.testing.assert_allclose(prompt_attention(q, k, v, None, causal=True).numpy(),
                               paddle_ops(prompt_attention, q, k, v, None, causal=True), atol=0)


# building

def test_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv("JANUS_CPU_KERNELS", "fast")
    with pytest.raises(ValueError, match="JANUS_CPU_KERNELS must be one of auto, off, require"):
        cpu_kernels.mode()


def test_a_second_build_finds_the_first_and_leaves_no_partial_files(tmp_path):
    first = cpu_kernels.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.build(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_the_cache_key_changes_with_source_flags_compiler_and_cpu(monkeypatch):
    key = cpu_kernels._cache_key("cc", ["-O3"], b"source")
    assert cpu_kernels._cache_key("cc", ["-O3"], b"source") == key
    assert cpu_kernels._cache_key("cc", ["-O3"], b"other source") != key
    assert cpu_kernels._cache_key("cc", ["-O2"], b"source") != key
    monkeypatch.setattr(cpu_kernels, "_compiler_version", lambda compiler: "cc 99")
    assert cpu_kernels._cache_key("cc", ["-O3"], b"source") != key
    monkeypatch.undo()
    monkeypatch.setattr(cpu_kernels, "_cpu_features", lambda: "flags: other cpu")
    assert cpu_kernels._cache_key("cc", ["-O3"], b"source") != key


def test_failing_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.raises(cpu_kernels.KernelBuildError, match="false"):
        cpu_kernels.build(tmp_path)


def test_auto_mode_falls_back_to_paddle_with_a_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("JANUS_CPU_KERNELS", "auto")
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setattr(cpu_kernels, "cache_root", lambda: tmp_path)
    with caplog.at_level(logging.WARNING, logger="model.cpu_kernels"):
        assert cpu_kernels.library() is None
    assert "using Paddle's ops" in caplog.text
    rng = np.random.default_rng(7)
    q = _tensor(rng, 1, 5, 2, 16)
    assert prompt_attention(q, q, q, None, causal=True).shape == [1, 5, 32]


def test_require_mode_fails_when_the_build_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("JANUS_CPU_KERNELS", "require")
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setattr(cpu_kernels, "cache_root", lambda: tmp_path)
    with pytest.raises(cpu_kernels.KernelBuildError, match="false"):
        cpu_kernels.library()
