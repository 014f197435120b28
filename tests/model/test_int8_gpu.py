"""int8 on the GPU goes through Paddle's weight-only ops, which exist for the GPU only: here they are replaced by CPU
stand-ins that follow their documented contract (weight_quantize: x [in, out] float16/bfloat16 -> int8 [out, in]
and one float32 scale per output channel; weight_only_linear: x @ (q * scale).T + bias), which checks what can be
checked without a GPU: which weights reach them, with which arguments, and how the layers call them. The numbers
on a real GPU are what `janus-serve self-test --device gpu --quantization int8` checks."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from model.checkpoint import gpu_int8, keys
from model.checkpoint.loader import load_janus
from model.layer_ops import linear
from model.tiny_checkpoint import build_tiny_checkpoint


class WeightOnlyOps:
    """Stand-ins for paddle.nn.quant.weight_quantize / weight_only_linear that record their calls."""

    def __init__(self) -> None:
        self.quantized: list[dict] = []
        self.products: list[dict] = []

    def weight_quantize(self, x, algo="weight_only_int8", arch=None, group_size=-1):
        self.quantized.append({"shape": list(x.shape), "dtype": x.dtype, "algo": algo, "group_size": group_size})
        w = x.astype("float32").numpy()
        scale = np.abs(w).max(axis=0) / 127
        q = np.clip(np.rint(w / np.where(scale > 0, scale, 1)), -127, 127).astype(np.int8)
        return paddle.to_tensor(np.ascontiguousarray(q.T)), paddle.to_tensor(scale.astype(np.float32))

    def weight_only_linear(self, x, weight, bias=None, weight_scale=None, weight_dtype="int8", arch=None,
                           group_size=-1):
        self.products.append({"weight_dtype": weight_dtype, "group_size": group_size, "weight": weight,
                              "scale": weight_scale, "bias": bias})
        w = weight.numpy().astype(np.float32).T * weight_scale.numpy()
        out = x.astype("float32").numpy() @ w
        if bias is not None:
            out = out + bias.astype("float32").numpy()
        return paddle.to_tensor(out).astype(x.dtype)


@pytest.fixture
def ops(monkeypatch) -> WeightOnlyOps:
    fake = WeightOnlyOps()
    monkeypatch.setattr(paddle.nn.quant, "weight_quantize", fake.weight_quantize)
    monkeypatch.setattr(paddle.nn.quant, "weight_only_linear", fake.weight_only_linear)
    return fake


class Holder(nn.Layer):
    def __init__(self, K: int, N: int) -> None:
        super().__init__()
        self.proj = nn.Linear(K, N)


def _half_layer(rng: np.random.Generator, K: int, N: int, dtype: str) -> tuple[Holder, np.ndarray, np.ndarray]:
    holder = Holder(K, N)
    w = (rng.standard_normal((K, N)) * K**-0.5).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    holder.proj.weight.set_value(w)
    holder.proj.bias.set_value(b)
    holder.to(dtype=dtype)
    return holder, holder.proj.weight.astype("float32").numpy(), b


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_quantized_layer_calls_the_weight_only_product_with_its_own_scale_and_bias(ops, dtype):
    rng = np.random.default_rng(0)
    holder, w, b = _half_layer(rng, 48, 20, dtype)
    gpu_int8.quantize_layers(holder, {"proj.weight"})
    assert ops.quantized == [{"shape": [48, 20], "dtype": getattr(paddle, dtype), "algo": "weight_only_int8",
                              "group_size": -1}]
    layer = holder.proj
    assert layer.weight.dtype == paddle.int8 and layer.weight.shape == [20, 48]  # Paddle's [out, in] layout
    assert (layer.int8_group, layer.int8_device) == (-1, "gpu") and layer.weight_scale.shape == [20]
    x = rng.standard_normal((3, 48)).astype(np.float32)
    out = linear(layer, paddle.to_tensor(x).astype(dtype))
    (call,) = ops.products
    assert (call["weight_dtype"], call["group_size"]) == ("int8", -1)
    assert call["weight"] is layer.weight and call["scale"] is layer.weight_scale and call["bias"] is layer.bias
    # per-channel int8 of these weights: within a few parts in a thousand of the unquantized product
    exact = x @ w + b
    np.testing.assert_allclose(out.astype("float32").numpy(), exact, atol=0.02 * np.abs(exact).max())


def test_weights_the_weight_only_path_cannot_take_are_refused(ops):
    holder = Holder(16, 8)  # float32
    with pytest.raises(ValueError, match="quantizes float16 or bfloat16"):
        gpu_int8.quantize_layers(holder, {"proj.weight"})
    with pytest.raises(ValueError, match="groups of -1, 64, 128, not 32"):
        gpu_int8.quantize_layers(holder, {"proj.weight"}, group=32)
    assert ops.quantized == []


def test_loading_for_the_gpu_quantizes_the_language_model_and_generation_head_on_the_device(ops, monkeypatch,
                                                                                           tmp_path):
    """On a GPU the loader loads the half-precision network as without quantization, then hands exactly the int8
    names to weight_quantize; everything else keeps the dtype."""
    directory = build_tiny_checkpoint(tmp_path / "ckpt", preset="tiny", seed=2, dtype="bfloat16")
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:0")
    model, report = load_janus(directory, dtype="bfloat16", cache_dir=False, quantization="int8")
    assert report.quantization == "int8"
    names = keys.int8_names(model)
    assert len(ops.quantized) == len(names)
    layers = dict(model.named_sublayers())
    for name, param in model.named_parameters():
        if name in names:
            assert param.dtype == paddle.int8 and layers[name.rpartition(".")[0]].int8_device == "gpu", name
        else:
            assert param.dtype == paddle.bfloat16, name


def test_the_cpu_refuses_half_precision_with_int8_and_the_gpu_float32(monkeypatch, tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", preset="tiny", seed=2)
    with pytest.raises(ValueError, match="on the cpu are computed in float32"):
        load_janus(directory, dtype="float16", cache_dir=False, quantization="int8")
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:0")
    with pytest.raises(ValueError, match="on the gpu take float16 or bfloat16"):
        load_janus(directory, dtype="float32", cache_dir=False, quantization="int8")
