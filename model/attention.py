"""Scaled dot-product attention for prompts (causal or full) and for one-token decode steps.

On the CPU in float32 these run the fused kernels of `model.cpu_kernels` when they are available; otherwise (GPU,
half precision, kernels switched off or unbuildable) Paddle's own ops: two matmuls around a masked softmax.
Both paths compute the same function; tests hold them to each other.
"""

from __future__ import annotations

import ctypes

import numpy as np
import paddle
import paddle.nn.functional as F

from model import cpu_kernels


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
    out = paddle.empty([B, T, H * D], dtype="float32")
    start_array = None if starts is None else np.ascontiguousarray(starts, dtype=np.int64)
    lib.janus_prompt_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, T, H, k.shape[2], D,
        q.strides[0], q.strides[1], k.strides[0], k.strides[1],
        None if start_array is None else start_array.ctypes.data, int(causal), D**-0.5)
    return out


def decode_attention(q: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor, valid: paddle.Tensor,
                     columns: int) -> paddle.Tensor:
    """One query per row against the cache: q [B, 1, H, D]; keys/values [B, KVH, max_len, D] (the cache view of
    slots 0..B-1); valid [B, max_len] 1.0 where a column holds a real token, read up to `columns`.
    -> [B, 1, H*D]."""
    B, _, H, D = q.shape
    lib = _native(q, keys, values, valid)
    if lib is None:
        return _paddle_decode_attention(q, keys, values, valid)
    out = paddle.empty([B, 1, H * D], dtype="float32")
    KVH, max_len = keys.shape[1], keys.shape[2]
    lib.janus_decode_attention(q.data_ptr(), keys.data_ptr(), values.data_ptr(), valid.data_ptr(), out.data_ptr(),
                               B, H, KVH, D, KVH * max_len * D, max_len * D, valid.shape[1], columns, D**-0.5)
    return out


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


def _paddle_decode_attention(q: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor,
                             valid: paddle.Tensor) -> paddle.Tensor:
    B, _, H, D = q.shape
    KVH = keys.shape[1]
    bias = _additive(valid > 0, q.dtype).reshape([B, 1, 1, valid.shape[1]])
    grouped = q.reshape([B, KVH, H // KVH, D])  # query heads that share a key/value head
    scores = paddle.matmul(grouped, keys, transpose_y=True) * (D**-0.5) + bias  # [B, KVH, G, max_len]
    probs = F.softmax(scores.astype("float32"), axis=-1).astype(values.dtype)
    return paddle.matmul(probs, values).reshape([B, 1, H * D])


def _additive(allowed: paddle.Tensor, dtype: paddle.dtype) -> paddle.Tensor:
    """Boolean mask -> 0 where allowed, the dtype's most negative value elsewhere."""
    return paddle.where(allowed, paddle.zeros([1], dtype), paddle.full([1], paddle.finfo(dtype).min, dtype))
