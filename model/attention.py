"""Scaled dot-product attention: over a prompt's own keys (causal or full), and over the paged KV pool for the
language model's prefills and decode steps.

On the CPU in float32 these run the fused kernels of `model.cpu_kernels` when they are available; otherwise (GPU,
half precision, kernels switched off or unbuildable) Paddle's own ops: two matmuls around a masked softmax.
Both paths compute the same function; tests hold them to each other.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import paddle
import paddle.nn.functional as F

from model import cpu_kernels
from model.kv_cache import RowBatch

# New positions per row up to which paged attention reads the pool in place, one query at a time (decode steps,
# windows of drafted tokens, short prompt suffixes); longer prompts gather each row's keys and values and attend
# 64 queries at a time with matrix products. Measured on Janus-Pro-1B's shape: see the README's bf16 section.
WINDOW_MAX_POSITIONS = 16


def prompt_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, starts: np.ndarray | None,
                     causal: bool) -> paddle.Tensor:
    """q [B, T, H, D], k/v [B, T, KVH, D] -> [B, T, H*D].

    starts[b]: the first real token of row b (left padding before it is never attended; a padding query attends
    to itself only, which keeps it finite). None: no padding. Query head h uses key/value head h // (H / KVH).
    """
    B, T, H, D = q.shape
    lib = _native(q, k, v, strided=True)
    if lib is None:
        return _paddle_prompt_attention(q, k, v, starts, causal)
    if list(k.strides) != list(v.strides) or not _rows_of_heads(k) or not _rows_of_heads(q):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = cpu_kernels.empty_float32([B, T, H * D])
    start_array = None if starts is None else np.ascontiguousarray(starts, dtype=np.int64)
    lib.janus_prompt_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, T, H, k.shape[2], D,
        q.strides[0], q.strides[1], k.strides[0], k.strides[1],
        None if start_array is None else start_array.ctypes.data, int(causal), D**-0.5)
    return out


def paged_attention(q: paddle.Tensor, key_pool: paddle.Tensor, value_pool: paddle.Tensor,
                    rows: RowBatch) -> paddle.Tensor:
    """New positions of paged rows attending causally to everything their rows hold (the new ones written first).

    q [B, T, H, D] (left-padded per `rows.pad`; a padding query gives zeros); key/value pools
    [blocks, KVH, block_size, D]; rows: block tables and cached lengths (see `model.kv_cache.RowBatch`).
    -> [B, T, H*D]. A prefill is T prompt positions; a decode step is T = 1; a window of drafted tokens a few.
    """
    B, T, H, D = q.shape
    lib = _native(q, key_pool, value_pool, strided=True)
    if lib is None:
        return _paddle_paged_attention(q, key_pool, value_pool, rows)
    if not _rows_of_heads(q):
        q = q.contiguous()
    KVH, block_size = key_pool.shape[1], key_pool.shape[2]
    out = cpu_kernels.empty_float32([B, T, H * D])
    few = few_positions_call(lib, rows, T, H, KVH, D, block_size)
    if few is not None:
        if T == 1 and q.strides[0] != H * D:
            q = q.contiguous()
        few(q.data_ptr(), q.strides[0], q.strides[1], key_pool.data_ptr(), value_pool.data_ptr(), out.data_ptr())
        return out
    tables = np.ascontiguousarray(rows.tables, dtype=np.int64)
    pad = np.ascontiguousarray(rows.pad, dtype=np.int64)
    cached = np.ascontiguousarray(rows.cached, dtype=np.int64)
    lib.janus_paged_prompt_attention(q.data_ptr(), key_pool.data_ptr(), value_pool.data_ptr(), out.data_ptr(),
                                     B, T, H, KVH, D, q.strides[0], q.strides[1], block_size, tables.ctypes.data,
                                     tables.shape[1], cached.ctypes.data, pad.ctypes.data, D**-0.5)
    return out


def few_positions_call(lib: ctypes.CDLL, rows: RowBatch, T: int, H: int, KVH: int, D: int,
                       block_size: int) -> Callable[[int, int, int, int, int, int], None] | None:
    """The kernel call of `paged_attention` for a forward of T <= WINDOW_MAX_POSITIONS columns (a decode step, a
    window), its row arguments made once for every layer: (q, q_b, q_t, key pool, value pool, out) addresses and q's
    strides -> None. None for longer forwards. q's rows of T = 1 must be H * D floats apart."""
    if T > WINDOW_MAX_POSITIONS:
        return None
    B = rows.tables.shape[0]
    tables = np.ascontiguousarray(rows.tables, dtype=np.int64)
    ends = np.ascontiguousarray(rows.lengths(T), dtype=np.int64)
    pad = np.ascontiguousarray(rows.pad, dtype=np.int64)
    # the arrays' addresses once (numpy's .ctypes.data costs microseconds); the closures keep the arrays alive
    held = (tables, ends, pad)
    tables_at, ends_at, pad_at = tables.ctypes.data, ends.ctypes.data, pad.ctypes.data
    width, scale = tables.shape[1], D**-0.5
    if T == 1 and not pad.any():
        def decode(q: int, q_b: int, q_t: int, keys: int, values: int, out: int, _held: tuple = held) -> None:
            lib.janus_paged_decode_attention(q, keys, values, out, B, H, KVH, D, block_size, tables_at, width, ends_at,
                                             scale)
        return decode

    def window(q: int, q_b: int, q_t: int, keys: int, values: int, out: int, _held: tuple = held) -> None:
        lib.janus_paged_window_attention(q, keys, values, out, B, T, H, KVH, D, q_b, q_t, block_size, tables_at, width,
                                         ends_at, pad_at, scale)
    return window


def _native(*tensors: paddle.Tensor, strided: bool = False) -> ctypes.CDLL | None:
    """The fused kernels when every tensor suits them (see `cpu_kernels.for_tensors`) and head_dim is a multiple
    of 8."""
    return None if tensors[0].shape[-1] % 8 else cpu_kernels.for_tensors(*tensors, strided=strided)


def _rows_of_heads(x: paddle.Tensor) -> bool:
    """[B, T, heads, D] with each token's heads side by side (the layout the kernel indexes)."""
    return x.strides[-1] == 1 and x.strides[-2] == x.shape[-1]


# Paddle's ops: the reference path

def _paddle_prompt_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, starts: np.ndarray | None,
                             causal: bool) -> paddle.Tensor:
    B, T, H, D = q.shape
    if k.shape[2] != H:
        k = paddle.repeat_interleave(k, H // k.shape[2], axis=2)
        v = paddle.repeat_interleave(v, H // v.shape[2], axis=2)
    # Scale the queries (T x D) rather than the scores (T x T), and add the mask in place: on CPU, broadcasting
    # and freshly allocated T x T temporaries cost more than the matmuls.
    scores = paddle.matmul((q * (D**-0.5)).transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3]), transpose_y=True)
    if causal or starts is not None:
        scores.add_(paddle.to_tensor(_prompt_bias(starts, B, T, H, causal), dtype=scores.dtype))
    if scores.dtype != paddle.float32:
        scores = scores.astype("float32")
    probs = F.softmax(scores, axis=-1).astype(v.dtype)
    out = paddle.matmul(probs, v.transpose([0, 2, 1, 3]))  # [B, H, T, D]
    return out.transpose([0, 2, 1, 3]).reshape([B, T, H * D])


def _prompt_bias(starts: np.ndarray | None, B: int, T: int, heads: int, causal: bool) -> np.ndarray:
    """Additive mask [B, heads, T, T]: 0 where query t may see key j, float32's lowest elsewhere. Built on the host,
    where these boolean ops cost a fraction of Paddle's."""
    first = np.zeros(B, np.int64) if starts is None else np.asarray(starts, np.int64)
    keys = np.arange(T)
    allowed = np.broadcast_to(keys[None, None, :] >= first[:, None, None], (B, T, T))
    if causal:
        allowed = allowed & np.tril(np.ones((T, T), bool))
    allowed = allowed | (np.eye(T, dtype=bool)[None] & (keys[None, :, None] < first[:, None, None]))
    bias = np.where(allowed, np.float32(0), np.finfo(np.float32).min).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(bias[:, None], (B, heads, T, T)))


def _paddle_paged_attention(q: paddle.Tensor, key_pool: paddle.Tensor, value_pool: paddle.Tensor,
                            rows: RowBatch) -> paddle.Tensor:
    B, T, H, D = q.shape
    _, KVH, block_size, _ = key_pool.shape
    lengths = rows.lengths(T)
    blocks = -(-int(lengths.max()) // block_size)
    L = blocks * block_size
    index = paddle.to_tensor(np.ascontiguousarray(rows.tables[:, :blocks]).reshape(-1), place=q.place)

    def gathered(pool: paddle.Tensor) -> paddle.Tensor:  # [B, H, L, D]: each row's blocks in order, per query head
        rows_of = paddle.index_select(pool, index).reshape([B, blocks, KVH, block_size, D])
        rows_of = rows_of.transpose([0, 2, 1, 3, 4]).reshape([B, KVH, L, D])
        return paddle.repeat_interleave(rows_of, H // KVH, axis=1) if KVH != H else rows_of

    keys, values = gathered(key_pool), gathered(value_pool)
    # query column t of row b sits at position cached + t - pad and sees keys 0..that; a padding query sees key 0
    position = rows.cached[:, None] + np.arange(T)[None, :] - rows.pad[:, None]  # [B, T]
    real = np.arange(T)[None, :] >= rows.pad[:, None]
    allowed = np.arange(L)[None, None, :] <= np.where(real, position, 0)[:, :, None]  # [B, T, L]
    bias = np.where(allowed, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None]
    scores = paddle.matmul((q * (D**-0.5)).transpose([0, 2, 1, 3]), keys, transpose_y=True)  # [B, H, T, L]
    scores = scores.astype("float32") + paddle.to_tensor(bias, place=q.place)
    probs = F.softmax(scores, axis=-1).astype(values.dtype)
    out = paddle.matmul(probs, values).transpose([0, 2, 1, 3])  # [B, T, H, D]
    out = out * paddle.to_tensor(real[:, :, None, None].astype(np.float32), place=q.place).astype(out.dtype)
    return out.reshape([B, T, H * D])
