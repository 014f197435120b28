"""Weight-only int8: quantizing a Linear weight and the CPU products from it.

A weight [K, N] (Paddle's Linear layout: rows are the layer's inputs) is held as q [K, N] int8 and a float32 scale
per output column for each group of `group` weight rows, scales [ceil(K / group), N]: W[k, n] ~ q[k, n] *
scales[k // group, n]. Symmetric, round to nearest: scale = max |W| over the group / 127, so every q lies in
[-127, 127] and the largest weight of each group is kept exactly (up to float32 rounding of the scale).

The group is a multiple of 8 (the few-row kernel sums eight weight rows before it applies their scale); a group of
at least K is one scale per output column (per channel).

The kernels read q held in pairs of rows (`pair_rows`; model/cpu_kernels/int8_pairs.h): rows 2i and 2i + 1
interleaved column by column, an odd K's last row on its own. The tensor keeps its shape [K, N]; its bytes are in
that order. `quantize` and `dequantize` speak of the plain matrix.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import paddle

from model import cpu_kernels

GROUP_SIZE = 64  # weight rows per scale
# Rows up to which products take the streaming kernel (int8_rows.c; 32 rows a pass, each sweep's weights going to
# every group of 4-8 rows from L2), the many-row entry above (MKL on dequantized panels from 128 rows, the blocked
# kernel without MKL). On the integer path (AVX2 or AVX-512BW) streaming won at every count measured on the 1B shape
# (AVX-512, python -m bench.int8 --crossover --rows 2 4 5 6 8 12 16 32: 8 rows 161 against 332 ms, 32 rows 514
# against 691; AMD EPYC with AVX2, the kernels alone: 8 rows 0.42, 32 rows 0.80, 64-127 rows 0.97-0.98 of the
# entry's time), and a row's result is then the same whatever the step's row count up to 127 (its activations are
# rounded on their own). The float path keeps the earlier threshold. None: by the path; a number overrides it
# (benchmarks).
ROWS_MAX: int | None = None
ROWS_MAX_INTEGER_PATH = 127
ROWS_MAX_FLOAT_PATH = 4
_CHUNK_FLOATS = 1 << 24  # quantized at a time (64 MiB of float32): the float32 copy of a weight never exists whole


def rows_max(lib) -> int:  # noqa: ANN001 (the loaded kernels)
    """Rows up to which `linear` takes the streaming kernel of these kernels."""
    if ROWS_MAX is not None:
        return ROWS_MAX
    return ROWS_MAX_INTEGER_PATH if _activation_bits(lib) == 16 else ROWS_MAX_FLOAT_PATH


@functools.cache
def _activation_bits(lib) -> int:  # noqa: ANN001
    """What the library's few-row kernel rounds activations to (asked once per library, not at every product)."""
    return int(lib.janus_int8_rows_activation_bits())


def check_group(group: int) -> None:
    if group <= 0 or group % 8:
        raise ValueError(f"the int8 group size must be a positive multiple of 8, got {group}")


def scale_rows(K: int, group: int) -> int:
    return math.ceil(K / group) if K else 0


def quantize(weight: np.ndarray, group: int = GROUP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """weight [K, N] (float32, float64, or bf16 bits as uint16) -> (q [K, N] int8, scales [ceil(K / group), N]
    float32), a few groups of rows at a time."""
    check_group(group)
    K, N = weight.shape
    q = np.empty((K, N), np.int8)
    scales = np.empty((scale_rows(K, group), N), np.float32)
    step = max(group, _CHUNK_FLOATS // max(N, 1) // group * group)  # whole groups
    for k0 in range(0, K, step):
        chunk = _as_float32(weight[k0:k0 + step])
        for g0 in range(0, chunk.shape[0], group):
            block = chunk[g0:g0 + group]
            peak = np.abs(block).max(axis=0)
            scale = (peak / np.float32(127)).astype(np.float32)
            inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
            np.clip(np.rint(block * inverse), -127, 127, out=block)
            q[k0 + g0:k0 + g0 + block.shape[0]] = block
            scales[(k0 + g0) // group] = scale
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """The float32 weights the int8 ones stand for (each q * its scale, rounded once to float32 as the kernels do)."""
    return (q.astype(np.float32) * np.repeat(scales, group, axis=0)[:q.shape[0]]).astype(np.float32)


def pair_rows(q: np.ndarray) -> np.ndarray:
    """q [K, N] -> the same bytes in pairs of rows, as the kernels read them (shape [K, N] kept)."""
    K, N = q.shape
    even = K - K % 2
    out = np.empty_like(q)
    out[:even] = q[:even].reshape(even // 2, 2, N).transpose(0, 2, 1).reshape(even, N)
    out[even:] = q[even:]
    return out


def unpair_rows(held: np.ndarray) -> np.ndarray:
    """The plain matrix q [K, N] of weights held in pairs of rows (the inverse of `pair_rows`)."""
    K, N = held.shape
    even = K - K % 2
    out = np.empty_like(held)
    out[:even] = held[:even].reshape(even // 2, N, 2).transpose(0, 2, 1).reshape(even, N)
    out[even:] = held[even:]
    return out


def _as_float32(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.uint16:  # bf16 bits: the top half of a float32
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32)  # a copy: quantize() overwrites it in place


def layer_linear(layer: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """x [..., K] through a layer whose weight is held as int8 (`weight_scale` and `int8_group` beside it, as the
    loader leaves them)."""
    # a plain attribute, in the layer's __dict__ when set (gpu_int8); getattr would go through Paddle's slow
    # Layer.__getattr__ and an exception on every CPU product
    if layer.__dict__.get("int8_device", "cpu") == "gpu":
        from model.checkpoint import gpu_int8  # Paddle's weight-only kernels (GPU only)

        return gpu_int8.linear(layer, x)
    return linear(x, layer.weight, layer.weight_scale, layer.int8_group, getattr(layer, "bias", None))


def linear(x: paddle.Tensor, q: paddle.Tensor, scales: paddle.Tensor, group: int,
           bias: paddle.Tensor | None) -> paddle.Tensor:
    """float32 x [..., K] @ int8 weight (q [K, N] held in pairs of rows, scales) (+ float32 bias) -> float32 [..., N],
    in float32.

    Without the kernels (off, or not on the CPU) the weight is dequantized through Paddle per call: correct, slow."""
    K, N = q.shape
    if x.shape[-1] != K:
        raise ValueError(f"input width {x.shape[-1]} does not match the weight's {K} rows")
    lib = cpu_kernels.library() if x.place.is_cpu_place() and cpu_kernels.is_dtype(x, paddle.float32) else None
    if lib is None or (bias is not None and not cpu_kernels.is_dtype(bias, paddle.float32)):
        plain = _unpair_rows_paddle(q).astype("float32")
        weight = plain.reshape([-1, group, N]) if K % group == 0 else None
        if weight is None:
            full = paddle.repeat_interleave(scales, group, axis=0)[:K]
            dequantized = plain * full
        else:
            dequantized = (weight * scales.unsqueeze(1)).reshape([K, N])
        out = paddle.matmul(x, dequantized.astype(x.dtype))
        return out if bias is None else out + bias.astype(x.dtype)
    x = x if x.is_contiguous() else x.contiguous()
    rows = math.prod(x.shape[:-1])
    out = cpu_kernels.empty_float32([*x.shape[:-1], N])
    args = (x.data_ptr(), q.data_ptr(), scales.data_ptr(), group, None if bias is None else bias.data_ptr(),
            out.data_ptr(), rows, K, N)
    if not kernel(lib, rows)(*args):
        raise MemoryError(f"no memory for the buffers of a {rows} x {K} x {N} int8 product")
    return out


def kernel(lib, rows: int):  # noqa: ANN001, ANN201 (the loaded kernels, one of their functions)
    """The kernel of a product of `rows` rows: (x, q, scales, group, bias, y, rows, K, N) -> 0 when out of memory."""
    return lib.janus_linear_rows_int8 if rows <= rows_max(lib) else lib.janus_linear_int8


def _unpair_rows_paddle(held: paddle.Tensor) -> paddle.Tensor:
    """`unpair_rows` with Paddle's ops, on the tensor's device."""
    K, N = held.shape
    even = K - K % 2
    plain = held[:even].reshape([even // 2, N, 2]).transpose([0, 2, 1]).reshape([even, N])
    return plain if even == K else paddle.concat([plain, held[even:]], axis=0)
