"""The decoder layers of a few-position forward (a decode step, a window of drafted tokens) as direct calls of the
CPU kernels.

`Backbone._layers` runs each small operation through `layer_ops`, and every such call checks its tensors, asks which
kernels are loaded and makes a Paddle tensor for its output: some 300 calls a step. Here one check per forward finds
that every operation has a kernel, the weights' addresses are read once, and the layers run in buffers made once per
forward. On a 2-core AMD EPYC a decode step of a model with Janus-Pro-1B's layers and heads but 128 wide (so that its
kernels take almost nothing) took 24.5 ms through the general loop against 9.3 ms here, and a 1B step of 1-2 rows
with bf16 weights about 0.8 of its time (`python -m bench.native_layers`, with and without `--overhead`). The
kernels, their arguments and their order are those of `Backbone._layers`, so the outputs are the same bit for bit
(tests compare the two, and the keys and values written).

Anything else (a GPU, kernels switched off, a prompt longer than a window, float32 weights past the rows their
kernel serves, weights held some other way) returns None, and the general loop runs.
"""

from __future__ import annotations

import ctypes
import weakref
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

# One projection of the forward's rows: (kernel, weight, int8 scales or None, int8 group, bias or None, rows, K, N),
# addresses as ints; called as kernel(x, weight, [scales, group,] bias, y, rows, K, N)
Projection = tuple[Callable[..., int], int, int | None, int, int | None, int, int, int]


def forward(lm: nn.Layer, cfg: LanguageConfig, embeds: paddle.Tensor, cache: PagedKVCache, rows: RowBatch,
            positions: np.ndarray, rotary_tables: tuple[paddle.Tensor, paddle.Tensor],
            last_only: bool) -> paddle.Tensor | None:
    """What `Backbone._layers` returns for `Backbone.extend` (cache.start already called), or None where the
    kernels cannot run it all. positions: [B, T] rotary positions; rotary_tables: half cos and sin [P, D / 2]."""
    B, T, _ = embeds.shape
    lib = cpu_kernels.library()
    if (lib is None or not cache.on_host or not embeds.place.is_cpu_place()
            or not cpu_kernels.is_dtype(embeds, paddle.float32) or not _float32_cpu(cache.keys[0]) or cfg.head_dim % 8):
        return None
    attention = few_positions_call(lib, rows, T, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                   cache.block_size)
    if attention is None:
        return None
    layers, final_norm = _sublayers(lm)
    M = B * T
    plans = []
    for i, layer in enumerate(layers):  # with last_only the last layer's output projection and MLP take B rows
        plan = _LayerPlan.of(lib, layer, M, B if last_only and i == len(layers) - 1 else M)
        if plan is None:
            return None
        plans.append(plan)
    if not _float32_cpu(final_norm.weight):
        return None
    return _run(lib, cfg, plans, final_norm, embeds, cache, positions, rotary_tables, attention, last_only)


def _run(lib: ctypes.CDLL, cfg: LanguageConfig, plans: list[_LayerPlan], final_norm: nn.Layer,
         embeds: paddle.Tensor, cache: PagedKVCache, positions: np.ndarray,
         rotary_tables: tuple[paddle.Tensor, paddle.Tensor], attention: Callable[[int, int, int, int, int, int], None],
         last_only: bool) -> paddle.Tensor:
    B, T, hidden = embeds.shape
    M = B * T
    H, KVH, D, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    result = cpu_kernels.empty_float32([B, 1, hidden] if last_only else [B, T, hidden])  # the final norm's output
    h = host_view(embeds if embeds.is_contiguous() else embeds.contiguous()).reshape(M, hidden).copy()  # residual
    h_next = np.empty((M, hidden), np.float32)  # the sums after attention
    x = np.empty((M, hidden), np.float32)  # the normed input of the next projections
    q, attended = np.empty((M, H * D), np.float32), np.empty((M, H * D), np.float32)
    k, v = np.empty((B, T, KVH, D), np.float32), np.empty((B, T, KVH, D), np.float32)
    projected = np.empty((M, hidden), np.float32)
    gate, up, act = (np.empty((M, inter), np.float32) for _ in range(3))
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    # numpy's .ctypes.data costs microseconds: every address once
    h_at, h_next_at, x_at, q_at, attended_at, k_at, v_at, projected_at, gate_at, up_at, act_at, positions_at = (
        a.ctypes.data for a in (h, h_next, x, q, attended, k, v, projected, gate, up, act, positions))
    cos, sin = rotary_tables[0].data_ptr(), rotary_tables[1].data_ptr()

    first = plans[0]
    lib.janus_rms_norm(h_at, first.input_norm, x_at, M, hidden, first.input_eps)
    rows = M
    for i, plan in enumerate(plans):
        last = i == len(plans) - 1
        _project(plan.q, x_at, q_at)
        _project(plan.k, x_at, k_at)
        _project(plan.v, x_at, v_at)
        lib.janus_rope(q_at, positions_at, cos, sin, M, H, D)
        lib.janus_rope(k_at, positions_at, cos, sin, M, KVH, D)
        cache.write_host(i, k, v)
        attention(q_at, T * H * D, H * D, cache.keys[i].data_ptr(), cache.values[i].data_ptr(), attended_at)
        if last and last_only and T > 1:  # only each row's last position goes on (numpy copies overlaps first)
            rows = B
            attended[:B] = attended.reshape(B, T, H * D)[:, -1]
            h[:B] = h.reshape(B, T, hidden)[:, -1]
        _project(plan.o, attended_at, projected_at)
        lib.janus_add_rms_norm(h_at, projected_at, plan.post_norm, h_next_at, x_at, rows, hidden, plan.post_eps)
        _project(plan.gate, x_at, gate_at)
        _project(plan.up, x_at, up_at)
        lib.janus_swiglu(gate_at, up_at, act_at, rows * inter)
        _project(plan.down, act_at, projected_at)
        after, after_eps = ((final_norm.weight.data_ptr(), final_norm.variance_epsilon) if last
                            else (plans[i + 1].input_norm, plans[i + 1].input_eps))
        lib.janus_add_rms_norm(h_next_at, projected_at, after, h_at, result.data_ptr() if last else x_at, rows,
                               hidden, after_eps)
    return result


def _project(projection: Projection, x: int, y: int) -> None:
    kernel, weight, scales, group, bias, rows, K, N = projection
    done = (kernel(x, weight, bias, y, rows, K, N) if scales is None
            else kernel(x, weight, scales, group, bias, y, rows, K, N))
    if not done:
        raise MemoryError(f"no memory for the buffers of a {rows} x {K} x {N} product")


def _float32_cpu(tensor: paddle.Tensor) -> bool:
    return tensor.place.is_cpu_place() and cpu_kernels.is_dtype(tensor, paddle.float32) and tensor.is_contiguous()


# The decoder layers' sublayers, looked up once per model (Paddle's Layer.__getattr__ costs a microsecond or two a
# name, and a step would look up some 300): (input norm, q, k, v, o, gate, up, down, post-attention norm) per
# layer, and the final norm. Weights are read from them at every forward (a set_value may move them).
_SUBLAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sublayers(lm: nn.Layer) -> tuple[list[tuple[nn.Layer, ...]], nn.Layer]:
    found = _SUBLAYERS.get(lm)
    if found is None:
        layers = [(layer.input_layernorm, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                   layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj,
                   layer.post_attention_layernorm) for layer in lm.llama.layers]
        found = _SUBLAYERS[lm] = (layers, lm.llama.norm)
    return found


class _LayerPlan:
    """One decoder layer's projections as kernel calls, and its norms' weights."""

    __slots__ = ("input_norm", "input_eps", "q", "k", "v", "o", "gate", "up", "down", "post_norm", "post_eps")

    @classmethod
    def of(cls, lib: ctypes.CDLL, layer: tuple[nn.Layer, ...], rows: int, later_rows: int) -> _LayerPlan | None:
        """rows: the forward's rows; later_rows: those after this layer's attention (fewer with last_only)."""
        input_norm, *linears, post_norm = layer
        calls = [_projection(lib, linear, rows if n < 3 else later_rows) for n, linear in enumerate(linears)]
        if any(call is None for call in calls) or not (_float32_cpu(input_norm.weight)
                                                       and _float32_cpu(post_norm.weight)):
            return None
        plan = cls()
        plan.q, plan.k, plan.v, plan.o, plan.gate, plan.up, plan.down = calls
        plan.input_norm, plan.input_eps = input_norm.weight.data_ptr(), input_norm.variance_epsilon
        plan.post_norm, plan.post_eps = post_norm.weight.data_ptr(), post_norm.variance_epsilon
        return plan


def _projection(lib: ctypes.CDLL, layer: nn.Linear, rows: int) -> Projection | None:
    """The kernel call `layer_ops.linear` makes for `rows` rows through this layer, or None where it makes none."""
    weight, bias = layer.weight, layer.bias
    if not weight.place.is_cpu_place() or (bias is not None and not _float32_cpu(bias)):
        return None
    K, N = weight.shape
    bias_at = None if bias is None else bias.data_ptr()
    if cpu_kernels.is_dtype(weight, paddle.bfloat16):
        return bf16_kernel(lib, rows), weight.data_ptr(), None, 0, bias_at, rows, K, N
    if cpu_kernels.is_dtype(weight, paddle.int8):
        if layer.__dict__.get("int8_device", "cpu") != "cpu":
            return None
        return (int8.kernel(lib, rows), weight.data_ptr(), layer.weight_scale.data_ptr(), layer.int8_group, bias_at,
                rows, K, N)
    if cpu_kernels.is_dtype(weight, paddle.float32) and rows <= cpu_kernels.LINEAR_MAX_ROWS:
        return lib.janus_linear_rows, weight.data_ptr(), None, 0, bias_at, rows, K, N
    return None  # float32 weights past LINEAR_MAX_ROWS: paddle.matmul in the general loop
