"""int8 weights on the GPU through Paddle's weight-only path: each weight `keys.int8_names` names is quantized on the
device after loading (`paddle.nn.quant.weight_quantize`, per output channel or groups of 64 / 128 rows) and its
products run `paddle.nn.quant.weight_only_linear`, which widens the int8 weights inside its own CUDA kernel. Paddle
has these for the GPU only; the CPU has its own kernels (`model.cpu_kernels.int8`)."""

from __future__ import annotations

import paddle
from paddle.base.framework import EagerParamBase

GPU_GROUPS = (-1, 64, 128)  # what weight_quantize accepts: -1 is one scale per output channel
ALGO = "weight_only_int8"


def quantize_layers(model: paddle.nn.Layer, names: set[str], group: int = -1) -> None:
    """Replace each named weight ([in, out], float16 or bfloat16 on the GPU) by weight_quantize's int8 weight ([out,
    in]) and its scales, left on the owning layer as `weight_scale`, `int8_group` and `int8_device = "gpu"`, which
    `model.cpu_kernels.int8.layer_linear` reads."""
    if group not in GPU_GROUPS:
        raise ValueError(f"Paddle's weight-only int8 takes groups of {', '.join(map(str, GPU_GROUPS))}, not {group}")
    sublayers = dict(model.named_sublayers())
    for name in sorted(names):
        owner_name, _, attribute = name.rpartition(".")
        owner = sublayers[owner_name]
        weight = getattr(owner, attribute)
        if weight.dtype not in (paddle.float16, paddle.bfloat16):
            raise ValueError(f"{name}: Paddle's weight-only int8 quantizes float16 or bfloat16, not {weight.dtype}")
        q, scales = paddle.nn.quant.weight_quantize(weight, algo=ALGO, group_size=group)
        parameter = EagerParamBase.from_tensor(q)
        parameter.stop_gradient = True
        setattr(owner, attribute, parameter)
        owner.weight_scale = scales
        owner.int8_group = group
        owner.int8_device = "gpu"


def linear(layer: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """x [..., in] through a layer quantized by quantize_layers."""
    return paddle.nn.quant.weight_only_linear(x, layer.weight, bias=getattr(layer, "bias", None),
                                              weight_scale=layer.weight_scale, weight_dtype="int8",
                                              group_size=layer.int8_group)
