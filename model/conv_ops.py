"""Convolution and GroupNorm on channels-last (NHWC) float32 CPU tensors, through the kernels of
`model.cpu_kernels` (see conv.c): the VQ decoder's CPU path.

Paddle's CPU convolution runs at about a quarter of the machine's matrix-product rate and its GroupNorm and SiLU
are several eager passes over the activations; channels-last makes a convolution one gathered matrix product
(MKL's sgemm) and lets GroupNorm, the affine and swish be one pass. Callers check `cpu_kernels.for_tensors` first;
every function here needs the kernels.
"""

from __future__ import annotations

import ctypes
import math

import paddle
from paddle import nn


def conv2d(lib: ctypes.CDLL, x: paddle.Tensor, conv: nn.Conv2D, residual: paddle.Tensor | None = None,
           upsample: bool = False) -> paddle.Tensor:
    """x [B, H, W, Cin] -> conv(x) (+ residual) [B, H', W', Cout] for Paddle's Conv2D with stride 1 and a 1x1 or 3x3
    kernel padded by 1 ("same" size). upsample: convolve x upsampled 2x (nearest) instead, H' = 2H.

    The residual may be the output buffer of an earlier call that nothing else holds (it is then added in place)."""
    B, H, W, cin = x.shape
    cout, _, kh, kw = conv.weight.shape
    if kh != kw or kh not in (1, 3) or list(conv._stride) != [1, 1] or list(conv._dilation) != [1, 1] \
            or conv._groups != 1 or _padding(conv) != kh // 2:
        raise ValueError(f"conv2d supports stride-1 'same' 1x1 and 3x3 convolutions, not {conv}")
    scale = 2 if upsample else 1
    packed = paddle.empty([kh * kw * cin, cout], "float32")
    lib.janus_pack_conv_weight(conv.weight.data_ptr(), packed.data_ptr(), cout, cin, kh * kw)
    out = paddle.empty([B, H * scale, W * scale, cout], "float32")
    if residual is not None and list(residual.shape) != out.shape:
        raise ValueError(f"residual {residual.shape} does not match the output {out.shape}")
    lib.janus_conv2d_nhwc(x.data_ptr(), packed.data_ptr(), None if conv.bias is None else conv.bias.data_ptr(),
                          None if residual is None else residual.data_ptr(), out.data_ptr(), B, H, W, cin, cout, kh,
                          int(upsample))
    return out


def group_norm(lib: ctypes.CDLL, x: paddle.Tensor, norm: nn.GroupNorm, swish: bool) -> paddle.Tensor:
    """GroupNorm (Paddle's layer: its groups, epsilon, weight and bias) over x [B, H, W, C], then v * sigmoid(v)
    when swish."""
    C = x.shape[-1]
    out = paddle.empty(x.shape, "float32")
    weight, bias = norm.weight, norm.bias
    lib.janus_group_norm_nhwc(x.data_ptr(), None if weight is None else weight.data_ptr(),
                              None if bias is None else bias.data_ptr(), out.data_ptr(), x.shape[0],
                              math.prod(x.shape[1:-1]), C, norm._num_groups, norm._epsilon, int(swish))
    return out


def _padding(conv: nn.Conv2D) -> int:
    padding = conv._padding
    if isinstance(padding, int):
        return padding
    values = set(padding) if isinstance(padding, list | tuple) else {padding}
    return values.pop() if len(values) == 1 and isinstance(next(iter(values)), int) else -1
