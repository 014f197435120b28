"""The decoder layers of a few-position forward (a decode step, a window of drafted tokens) as direct calls of the
CPU kernels.

`Backbone._layers` runs each small operation through `layer_ops`, and every such call checks its tensors, asks which
kernels are loaded and makes a Paddle tensor for its output: some 300 calls a step. On a 2-core AMD EPYC a decode
step of a model shaped like Janus-Pro-1B but 128 wide (so that its kernels take almost nothing) took 19 ms that way
against 5.4 ms as plain kernel calls, out of the 1B's ~140 ms a step. Here one check per forward finds that every
operation has a kernel, the weights' addresses are read once, and the layers run in buffers made once per forward.
The kernels, their arguments and their order are those of `Backbone._layers`, so the outputs are the same bit for bit
(tests compare the two, and the keys and values written).

Anything else (a GPU, kernels switched off, a prompt longer than a window, float32 weights past the rows their
kernel serves, weights held some other way) returns None, and the general loop runs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import paddle
from paddle import nn

from model import cpu_kernels
from model.attention import few_positions_call
from model.config import LanguageConfig
from model.cpu_kernels import int8
from model.host_memory import host_view
from model.kv_cache import PagedKVCache, RowBatch
from model.layer_ops import bf16_kernel

# (x address, y address) -> None: one projection of the forward's rows
Projection = Callable[[int, int], None]


def forward(lm: nn.Layer, cfg: LanguageConfig, embeds: paddle.Tensor, cache: PagedKVCache, rows: RowBatch,
            positions: np.ndarray, rotary_tables: tuple[paddle.Tensor, paddle.Tensor],
            last_only: bool) -> paddle.Tensor | None:
    """What `Backbone._layers` returns for `Backbone.extend` (cache.start already called), or None where the
    kernels cannot run it all. positions: [B, T] rotary positions; rotary_tables: half cos and sin [P, D / 2]."""
    B, T, _ = embeds.shape
    lib = cpu_kernels.library()
    if (lib is None or not cache.on_host or not _float32_cpu(embeds) or not _float32_cpu(cache.keys[0])
            or cfg.head_dim % 8):
        return None
    attention = few_positions_call(lib, rows, T, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                   cache.block_size)
    if attention is None:
        return None
    layers = lm.llama.layers
    M = B * T
    plans = []
    for i, layer in enumerate(layers):  # with last_only the last layer's output projection and MLP take B rows
        plan = _LayerPlan.of(lib, layer, M, B if last_only and i == len(layers) - 1 else M)
        if plan is None:
            return None
        plans.append(plan)
    norms = [layer.input_layernorm for layer in layers] + [lm.llama.norm]
    if not all(_float32_cpu(norm.weight) for norm in norms):
        return None
    return _run(lib, cfg, plans, norms, embeds, cache, positions, rotary_tables, attention, last_only)


def _run(lib: ctypes.CDLL, cfg: LanguageConfig, plans: list[_LayerPlan], norms: list[nn.Layer],
         embeds: paddle.Tensor, cache: PagedKVCache, positions: np.ndarray,
         rotary_tables: tuple[paddle.Tensor, paddle.Tensor], attention: Callable[[int, int, int, int, int, int], None],
         last_only: bool) -> paddle.Tensor:
    B, T, hidden = embeds.shape
    M = B * T
    H, KVH, D, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    result = cpu_kernels.empty_float32([B, 1, hidden] if last_only else [B, T, hidden])  # the final norm's output
    h = host_view(embeds).reshape(M, hidden).copy()  # the residual stream
    h_next = np.empty((M, hidden), np.float32)  # the sums after attention
    x = np.empty((M, hidden), np.float32)  # the normed input of the next projections
    q, attended = np.empty((M, H * D), np.float32), np.empty((M, H * D), np.float32)
    k, v = np.empty((B, T, KVH, D), np.float32), np.empty((B, T, KVH, D), np.float32)
    projected = np.empty((M, hidden), np.float32)
    gate, up, act = (np.empty((M, inter), np.float32) for _ in range(3))
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    cos, sin = rotary_tables[0].data_ptr(), rotary_tables[1].data_ptr()
    at = _address

    lib.janus_rms_norm(at(h), norms[0].weight.data_ptr(), at(x), M, hidden, norms[0].variance_epsilon)
    rows = M
    for i, plan in enumerate(plans):
        last = i == len(plans) - 1
        plan.q(at(x), at(q))
        plan.k(at(x), at(k))
        plan.v(at(x), at(v))
        lib.janus_rope(at(q), at(positions), cos, sin, M, H, D)
        lib.janus_rope(at(k), at(positions), cos, sin, M, KVH, D)
        cache.write_host(i, k, v)
        attention(at(q), T * H * D, H * D, cache.keys[i].data_ptr(), cache.values[i].data_ptr(), at(attended))
        if last and last_only and T > 1:  # only each row's last position goes on
            attended = np.ascontiguousarray(attended.reshape(B, T, H * D)[:, -1])
            h = np.ascontiguousarray(h.reshape(B, T, hidden)[:, -1])
            rows = B
        plan.o(at(attended), at(projected))
        lib.janus_add_rms_norm(at(h), at(projected), plan.post_norm, at(h_next), at(x), rows, hidden, plan.post_eps)
        plan.gate(at(x), at(gate))
        plan.up(at(x), at(up))
        lib.janus_swiglu(at(gate), at(up), at(act), rows * inter)
        plan.down(at(act), at(projected))
        after = norms[i + 1]
        lib.janus_add_rms_norm(at(h_next), at(projected), after.weight.data_ptr(), at(h),
                               result.data_ptr() if last else at(x), rows, hidden, after.variance_epsilon)
    return result


def _address(array: np.ndarray) -> int:
    return array.ctypes.data


def _float32_cpu(tensor: paddle.Tensor) -> bool:
    return tensor.place.is_cpu_place() and cpu_kernels.is_dtype(tensor, paddle.float32) and tensor.is_contiguous()


class _LayerPlan:
    """One decoder layer's projections as kernel calls, and its post-attention norm's weight."""

    __slots__ = ("q", "k", "v", "o", "gate", "up", "down", "post_norm", "post_eps")

    @classmethod
    def of(cls, lib: ctypes.CDLL, layer: nn.Layer, rows: int, later_rows: int) -> _LayerPlan | None:
        """rows: the forward's rows; later_rows: those after this layer's attention (fewer with last_only)."""
        attn, mlp = layer.self_attn, layer.mlp
        calls = [_projection(lib, attn.q_proj, rows), _projection(lib, attn.k_proj, rows),
                 _projection(lib, attn.v_proj, rows), _projection(lib, attn.o_proj, later_rows),
                 _projection(lib, mlp.gate_proj, later_rows), _projection(lib, mlp.up_proj, later_rows),
                 _projection(lib, mlp.down_proj, later_rows)]
        norm = layer.post_attention_layernorm
        if any(call is None for call in calls) or not _float32_cpu(norm.weight):
            return None
        plan = cls()
        plan.q, plan.k, plan.v, plan.o, plan.gate, plan.up, plan.down = calls
        plan.post_norm, plan.post_eps = norm.weight.data_ptr(), norm.variance_epsilon
        return plan


def _is_int8(layer: nn.Linear) -> bool:
    return cpu_kernels.is_dtype(layer.weight, paddle.int8)


def _projection(lib: ctypes.CDLL, layer: nn.Linear, rows: int) -> Projection | None:
    """The kernel call `layer_ops.linear` makes for `rows` rows through this layer, or None where it makes none."""
    weight, bias = layer.weight, layer.bias
    if not weight.place.is_cpu_place() or (bias is not None and not _float32_cpu(bias)):
        return None
    K, N = weight.shape
    bias_at = None if bias is None else bias.data_ptr()
    w = weight.data_ptr()
    if _is_int8(layer):
        if layer.__dict__.get("int8_device", "cpu") != "cpu":
            return None
        kernel = int8.kernel(lib, rows)
        scales, group = layer.weight_scale.data_ptr(), layer.int8_group

        def product(x: int, y: int) -> None:
            if not kernel(x, w, scales, group, bias_at, y, rows, K, N):
                raise MemoryError(f"no memory for the buffers of a {rows} x {K} x {N} int8 product")
        return product
    if cpu_kernels.is_dtype(weight, paddle.bfloat16):
        kernel = bf16_kernel(lib, rows)
    elif cpu_kernels.is_dtype(weight, paddle.float32) and rows <= cpu_kernels.LINEAR_MAX_ROWS:
        kernel = lib.janus_linear_rows
    else:  # float32 weights past LINEAR_MAX_ROWS: paddle.matmul in the general loop
        return None

    def product(x: int, y: int) -> None:
        if not kernel(x, w, bias_at, y, rows, K, N):
            raise MemoryError(f"no memory for the buffers of a {rows} x {K} x {N} product")
    return product
