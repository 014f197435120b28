"""Build the Paddle network for a checkpoint directory and fill it with the checkpoint's weights."""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle.base.framework import EagerParamBase
from paddlenlp.transformers.model_utils import no_init_weights

from model import cpu_kernels
from model.checkpoint import gpu_int8, keys
from model.checkpoint.errors import CheckpointError
from model.checkpoint.native_cache import CachedWeights, Int8Plan, load_native, widen_bf16
from model.config import JanusConfig
from model.janus import JanusModel
from model.runtime_env import cache_root

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8")


@dataclass(slots=True)
class LoadReport:
    seconds: float
    source: str  # "cache", "converted", "converted (not cached)"
    parameters: int
    dtype: str  # the compute dtype
    weights: str = "float32"  # how the projections' weights are held: "bfloat16" (CPU, computed in float32) or dtype
    quantization: str = "none"  # "int8": the language model's projections and the generation head held as int8


def build_lazy(cfg: JanusConfig, dtype: str = "float32") -> JanusModel:
    """The network with shapes but no allocated weights (fast even at 7B)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        with no_init_weights(), paddle.LazyGuard():
            return JanusModel(cfg)
    finally:
        paddle.set_default_dtype(previous)


def load_janus(directory: str | Path, dtype: str = "float32", cache_dir: Path | None | bool = True,
               keep_bf16: bool = False, quantization: str = "none") -> tuple[JanusModel, LoadReport]:
    """Load a local checkpoint directory. `cache_dir=True` uses the default cache, `False`/`None` disables it.

    keep_bf16 (float32 on the CPU): weights that the checkpoint stores as bf16 stay bf16 where the CPU kernels
    compute from bf16 (`keys.bf16_storable_names`: the projections and token embeddings), half the memory of
    float32; everything else is widened. Without the kernels (switched off or unbuildable) every weight is
    widened, as Paddle's CPU build cannot multiply bf16.

    quantization "int8" (float32 on the CPU): `keys.int8_names` are quantized while converting and held as int8
    with their scales (`model.cpu_kernels.int8`), the rest as without it. On the gpu (float16 or bfloat16) they
    are loaded as without it and quantized on the device for Paddle's weight-only kernels (`gpu_int8`)."""
    started = time.perf_counter()
    directory = Path(directory)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(SUPPORTED_DTYPES)}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
    on_gpu = paddle.get_device().startswith("gpu")
    if quantization == "int8" and dtype == "float32" and on_gpu:
        raise ValueError("int8 weights on the gpu take float16 or bfloat16 activations, not float32")
    if quantization == "int8" and dtype != "float32" and not on_gpu:
        raise ValueError(f"int8 weights on the cpu are computed in float32, not {dtype}")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if cache_dir is True:
        cache_dir = cache_root() / "converted"
    cfg = JanusConfig.from_file(directory / "config.json")
    model = build_lazy(cfg, dtype)
    params = dict(model.named_parameters())
    expected = {name: list(p.shape) for name, p in params.items()}
    keep = _bf16_storable(model) if keep_bf16 and dtype == "float32" else set()
    quantized = Int8Plan(frozenset(keys.int8_names(model))) if quantization == "int8" and not on_gpu else None
    if quantized is not None and cpu_kernels.library() is None:
        log.warning("int8 weights are dequantized by Paddle at every product: the CPU kernels are unavailable")
    native, source = load_native(directory, expected, keys.transposed_names(model), cache_dir or None,
                                 widen=dtype == "float32" and not keep, quantized=quantized)
    kept = 0
    sublayers = dict(model.named_sublayers()) if keep or quantized else {}
    for name, param in params.items():
        if quantized is not None and name in quantized.names:
            _hold_int8(sublayers, name, native, expected[name], quantized.group)
            continue
        if name in keep and isinstance(native, CachedWeights) and native.dtype_code(name) == "BF16":
            _replace_parameter(sublayers, name, _read_bf16(native, name, expected[name]))
            kept += 1
            continue
        arr, code = native[name]
        if code == "BF16" and (dtype == "bfloat16" or name in keep):
            bf16 = paddle.to_tensor(arr, dtype="bfloat16")
            if dtype == "bfloat16":
                param.set_value(bf16)
            else:  # a bf16 parameter in place of the float32 one the float32 network was built with
                _replace_parameter(sublayers, name, bf16)
                kept += 1
            continue
        weights = widen_bf16(arr) if code == "BF16" else arr.astype(np.float32, copy=False)
        param.set_value(weights if dtype == "float32" else paddle.to_tensor(weights).astype(dtype))
    if quantization == "int8" and on_gpu:  # Paddle's weight-only int8, quantized on the device
        gpu_int8.quantize_layers(model, keys.int8_names(model))
    model.eval()
    report = LoadReport(time.perf_counter() - started, source, sum(int(np.prod(s)) for s in expected.values()),
                        dtype, "bfloat16" if kept else dtype, quantization)
    held = (f", {len(quantized.names)} projections int8 (a scale per {quantized.group} rows)" if quantized else
            ", projections int8 (Paddle's weight-only int8, a scale per channel)" if quantization == "int8" else "")
    log.info("loaded %s (%d parameters, %s, weights %s%s) in %.2f s from %s", directory, report.parameters, dtype,
             report.weights, held, report.seconds, source)
    return model, report


def _hold_int8(sublayers: dict[str, paddle.nn.Layer], name: str, native: CachedWeights | dict, shape: list[int],
               group: int) -> None:
    """The layer's weight as int8 (read straight into its tensor from the cache) with its scales beside it as
    `weight_scale` and the group size as `int8_group`: what `layer_ops.linear` looks for."""
    scale_name = keys.scale_name(name)
    if isinstance(native, CachedWeights):
        q = _read_into(native, name, shape, "int8", ctypes.c_int8)
        scales = _read_into(native, scale_name, native.shapes()[scale_name], "float32", ctypes.c_float)
    else:
        q = paddle.to_tensor(native[name][0])
        scales = paddle.to_tensor(native[scale_name][0])
    _replace_parameter(sublayers, name, q)
    owner = sublayers[name.rpartition(".")[0]]
    owner.weight_scale = scales
    owner.int8_group = group


def _read_into(cached: CachedWeights, name: str, shape: list[int], dtype: str, ctype: type) -> paddle.Tensor:
    tensor = paddle.empty(shape, dtype)
    count = int(np.prod(shape))
    if count:
        cached.read_into(name, np.ctypeslib.as_array((ctype * count).from_address(tensor.data_ptr())))
    return tensor


def _bf16_storable(model: JanusModel) -> set[str]:
    """The names that may stay bf16, or none when the CPU kernels are not there to compute from them."""
    if cpu_kernels.library() is None:
        log.warning("bf16 weights are widened to float32: the CPU kernels that compute from bf16 are unavailable")
        return set()
    return keys.bf16_storable_names(model)


def _read_bf16(cached: CachedWeights, name: str, shape: list[int]) -> paddle.Tensor:
    """A bf16 tensor read from the cache file straight into its own memory (no numpy copy beside it: at 7B the
    largest weights are 0.8 GB)."""
    tensor = paddle.empty(shape, "bfloat16")
    count = int(np.prod(shape))
    if count:
        cached.read_into(name, np.ctypeslib.as_array((ctypes.c_uint16 * count).from_address(tensor.data_ptr())))
    return tensor


def _replace_parameter(sublayers: dict[str, paddle.nn.Layer], name: str, value: paddle.Tensor) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = sublayers[owner_name]
    parameter = EagerParamBase.from_tensor(value)  # shares value's memory
    parameter.stop_gradient = True
    setattr(owner, attribute, parameter)
