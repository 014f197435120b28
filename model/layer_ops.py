"""The layers' small operations: linear projections, embedding lookups, bias adds, RMSNorm (with the residual add
before it), the rotary embedding, SwiGLU and GELU.

On the CPU in float32 they run the kernels of `model.cpu_kernels`, one call each instead of several Paddle eager
ops (float32 projections only for the few rows of a decode step, where streaming the weights is what counts);
elsewhere Paddle's ops with the same arithmetic. Larger float32 projections call `paddle.matmul` directly:
PaddleNLP wraps `paddle.nn.functional.linear` for its fp8 models, which doubles the fixed cost of every Linear
layer call.

Weights stored as bfloat16 on the CPU (the published checkpoints' format, kept to halve memory and the bytes a
decode step reads) always go through the kernels, which widen them to float32 as they read them: Paddle's CPU
build has no bf16 matmul, and widening a whole weight through Paddle per call runs at about 0.5 GB/s.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from model import cpu_kernels
from model.cpu_kernels import int8

# rows up to which bf16 products take the row-streaming kernel (each thread streams a contiguous share of the weight
# rows, every row of x in register tiles of up to 8 (4 without AVX-512), 32 rows a pass); past it the register-blocked
# kernel, which reads the weights a panel of columns at a time. Streaming measured faster at every row count up to
# 64 on Janus-Pro-1B's projections (Xeon with AVX-512, in turns: 8 rows 0.52, 32 rows 0.75, 48 rows 0.86, 64 rows
# 0.94 of the blocked kernel's time; AMD EPYC with AVX2: 8 rows 0.58, 32-64 rows 0.82-0.98), and with it a row's
# outputs are those of the row alone, bit for bit, at any row count up to here.
BF16_ROWS_MAX = 64


def linear(layer: nn.Linear, x: paddle.Tensor) -> paddle.Tensor:
    """x [..., in] -> [..., out] with the layer's weight ([in, out]) and bias.

    A few rows (a decode step) on the CPU: the kernel that streams the weights at the machine's read bandwidth."""
    weight = layer.weight
    if cpu_kernels.is_dtype(weight, paddle.int8):  # JANUS_QUANTIZATION=int8
        return int8.layer_linear(layer, x)
    bias = layer.bias
    if cpu_kernels.is_dtype(weight, paddle.bfloat16) and cpu_kernels.is_dtype(x, paddle.float32):
        return bf16_linear(x, weight, bias)
    rows = math.prod(x.shape[:-1])
    if rows <= cpu_kernels.LINEAR_MAX_ROWS and weight.shape[0] == x.shape[-1]:
        lib = cpu_kernels.for_tensors(x, weight, *([] if bias is None else [bias]))
        if lib is not None:
            K, N = weight.shape
            out = cpu_kernels.empty_float32([*x.shape[:-1], N])
            if not lib.janus_linear_rows(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
                                         out.data_ptr(), rows, K, N):
                raise MemoryError(f"no memory for the partial sums of a {rows} x {K} x {N} product")
            return out
    out = paddle.matmul(x, weight)
    return out if bias is None else add_bias_(out, bias)


def matmul_weight(x: paddle.Tensor, weight: paddle.Tensor, transpose_y: bool = False) -> paddle.Tensor:
    """x [..., in] @ weight ([in, out], or [out, in] with transpose_y): a projection without a Linear layer (the
    LM head)."""
    if weight.dtype == paddle.bfloat16 and x.dtype == paddle.float32 and not transpose_y:
        return bf16_linear(x, weight, None)
    return paddle.matmul(x, weight, transpose_y=transpose_y)


def bf16_linear(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None) -> paddle.Tensor:
    """float32 x [..., K] @ bf16 weight [K, N] (+ float32 bias) -> float32 [..., N], computed in float32."""
    lib = cpu_kernels.library() if x.place.is_cpu_place() else None
    if lib is None or (bias is not None and bias.dtype != paddle.float32):
        out = paddle.matmul(x, weight.astype(x.dtype))  # no kernels: correct, but widens the whole weight per call
        return out if bias is None else out + bias.astype(x.dtype)
    x = x if x.is_contiguous() else x.contiguous()
    rows = math.prod(x.shape[:-1])
    K, N = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"input width {x.shape[-1]} does not match the weight's {K} rows")
    out = cpu_kernels.empty_float32([*x.shape[:-1], N])
    args = (x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(), rows, K, N)
    if not bf16_kernel(lib, rows)(*args):
        raise MemoryError(f"no memory for the buffers of a {rows} x {K} x {N} product")
    return out


def bf16_kernel(lib, rows: int):  # noqa: ANN001, ANN201 (the loaded kernels, one of their functions)
    """The kernel of a product of `rows` rows with bf16 weights: (x, w, bias, y, rows, K, N) -> 0 when out of memory."""
    return lib.janus_linear_rows_bf16 if rows <= BF16_ROWS_MAX else lib.janus_linear_bf16


def embedding(layer: nn.Embedding, ids: paddle.Tensor) -> paddle.Tensor:
    """ids [...] -> rows of the layer's table [..., dim], float32 when the table is stored as bf16 on the CPU."""
    table = layer.weight
    if table.dtype != paddle.bfloat16 or not ids.place.is_cpu_place():
        return layer(ids)
    lib = cpu_kernels.library()
    if lib is None:
        return layer(ids).astype("float32")
    flat = np.ascontiguousarray(ids.numpy().reshape(-1), dtype=np.int64)
    if flat.size and not 0 <= flat.min() <= flat.max() < table.shape[0]:  # the kernel would read past the table
        raise ValueError(f"token ids must lie in [0, {table.shape[0]})")
    out = cpu_kernels.empty_float32([*ids.shape, table.shape[1]])
    lib.janus_embedding_bf16(flat.ctypes.data, table.data_ptr(), out.data_ptr(), flat.size, table.shape[1])
    return out


def add_bias_(x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """x [..., n] + bias [n], in place where the CPU kernel runs (x must then be a fresh tensor): Paddle's CPU add
    broadcasts at about a nanosecond per element."""
    lib = cpu_kernels.for_tensors(x, bias)
    if lib is None:
        return x + bias
    dim = bias.shape[-1]
    lib.janus_add_bias(x.data_ptr(), bias.data_ptr(), math.prod(x.shape) // dim, dim)
    return x


def rms_norm(x: paddle.Tensor, norm: nn.Layer) -> paddle.Tensor:
    """PaddleNLP's LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * weight (computed in float32)."""
    x = x.contiguous()
    lib = cpu_kernels.for_tensors(x, norm.weight)
    if lib is None:
        return _paddle_rms_norm(x, norm)
    out = cpu_kernels.empty_float32(x.shape)
    dim = x.shape[-1]
    lib.janus_rms_norm(x.data_ptr(), norm.weight.data_ptr(), out.data_ptr(), math.prod(x.shape) // dim, dim,
                       norm.variance_epsilon)
    return out


def add_rms_norm(residual: paddle.Tensor, delta: paddle.Tensor,
                 norm: nn.Layer) -> tuple[paddle.Tensor, paddle.Tensor]:
    """The residual add and the norm after it: (residual + delta, rms_norm(residual + delta))."""
    lib = cpu_kernels.for_tensors(residual, delta, norm.weight)
    if lib is None:
        total = residual + delta
        return total, _paddle_rms_norm(total, norm)
    total = cpu_kernels.empty_float32(residual.shape)
    out = cpu_kernels.empty_float32(residual.shape)
    dim = residual.shape[-1]
    lib.janus_add_rms_norm(residual.data_ptr(), delta.data_ptr(), norm.weight.data_ptr(), total.data_ptr(),
                           out.data_ptr(), math.prod(residual.shape) // dim, dim, norm.variance_epsilon)
    return total, out


def swiglu(gate: paddle.Tensor, up: paddle.Tensor) -> paddle.Tensor:
    """silu(gate) * up, the Llama MLP's gate."""
    lib = cpu_kernels.for_tensors(gate, up)
    if lib is None:
        return F.swiglu(gate, up)
    out = cpu_kernels.empty_float32(gate.shape)
    lib.janus_swiglu(gate.data_ptr(), up.data_ptr(), out.data_ptr(), math.prod(gate.shape))
    return out


def gelu(x: paddle.Tensor) -> paddle.Tensor:
    """GELU, exact (erf) form."""
    lib = cpu_kernels.for_tensors(x)
    if lib is None:
        return F.gelu(x)
    out = cpu_kernels.empty_float32(x.shape)
    lib.janus_gelu(x.data_ptr(), out.data_ptr(), math.prod(x.shape))
    return out


def _paddle_rms_norm(x: paddle.Tensor, norm: nn.Layer) -> paddle.Tensor:
    # PaddleNLP's arithmetic without its per-call AMP guards (a third of a small step's time)
    x32 = x if x.dtype == paddle.float32 else x.astype("float32")
    normed = x32 * paddle.rsqrt((x32 * x32).mean(axis=-1, keepdim=True) + norm.variance_epsilon)
    return normed.astype(x.dtype) * norm.weight


class Rotary:
    """Llama's rotary position embedding (rotate-half convention), tables computed once."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        inv_freq = 1.0 / (theta ** (paddle.arange(0, head_dim, 2, dtype="int64").astype("float32") / head_dim))
        freqs = paddle.outer(paddle.arange(max_positions, dtype="float32"), inv_freq)  # [P, D/2]
        self.half_cos, self.half_sin = freqs.cos(), freqs.sin()  # the kernel's tables
        self.cos = paddle.concat([self.half_cos, self.half_cos], axis=-1)  # [P, D]
        # rotate_half(x) * sin == roll(x, D/2) * signed_sin: one op instead of slice, slice, negate, concat
        self.signed_sin = paddle.concat([-self.half_sin, self.half_sin], axis=-1)

    def plan(self, positions: np.ndarray, dtype: paddle.dtype, heads: int) -> RotaryPlan:
        """positions [B, T] -> what `apply` needs for every layer of one forward."""
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if positions.size and not 0 <= positions.min() <= positions.max() < self.cos.shape[0]:
            raise ValueError(f"rotary positions must lie in [0, {self.cos.shape[0]}), got "
                             f"{positions.min()}..{positions.max()}")
        return RotaryPlan(self, positions, dtype, heads)


class RotaryPlan:
    def __init__(self, rotary: Rotary, positions: np.ndarray, dtype: paddle.dtype, heads: int) -> None:
        self.rotary = rotary
        self.positions = positions
        self._tables: tuple[paddle.Tensor, paddle.Tensor] | None = None
        self._dtype, self._heads = dtype, heads

    def apply(self, x: paddle.Tensor) -> paddle.Tensor:
        """x [B, T, heads, D] -> rotated (in place on the CPU kernel path: x must be a fresh tensor)."""
        B, T, heads, D = x.shape
        lib = cpu_kernels.for_tensors(x)
        if lib is not None:
            lib.janus_rope(x.data_ptr(), self.positions.ctypes.data, self.rotary.half_cos.data_ptr(),
                           self.rotary.half_sin.data_ptr(), B * T, heads, D)
            return x
        cos, sin = self._materialised()
        if heads != cos.shape[2]:
            cos, sin = cos[:, :, :heads], sin[:, :, :heads]
        return x * cos + paddle.roll(x, D // 2, axis=-1) * sin

    def _materialised(self) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos, signed sin [B, T, heads, D], made once per forward: Paddle's CPU kernels broadcast slowly, and every
        layer multiplies queries and keys by these."""
        if self._tables is None:
            B, T = self.positions.shape
            flat = paddle.to_tensor(self.positions.reshape(-1))
            D = self.rotary.cos.shape[-1]
            cos = paddle.index_select(self.rotary.cos, flat).reshape([B, T, 1, D]).astype(self._dtype)
            sin = paddle.index_select(self.rotary.signed_sin, flat).reshape([B, T, 1, D]).astype(self._dtype)
            shape = [B, T, self._heads, D]
            self._tables = paddle.expand(cos, shape).clone(), paddle.expand(sin, shape).clone()
        return self._tables
