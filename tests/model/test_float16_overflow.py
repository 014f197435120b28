"""float16 (the V100's and T4's dtype with JANUS_DTYPE=auto) where the arithmetic can pass 65504: attention scores,
RMSNorm, the guidance combination and the VQ decoder's attention.

Paddle's CPU build has no float16 kernels, so the float16 arithmetic is reproduced in numpy the way a gpu computes
it (matmuls accumulate in float32 and round their output to float16; elementwise ops round every result), on inputs
that overflow where a guard is missing, against a float64 reference. Where the model's own order of operations
decides (the scale before the product), its Paddle ops run in float32 with their products recorded: what they hold
must fit float16.
"""

from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest

from model.sampling import guided_logits

F16_MAX = float(np.finfo(np.float16).max)  # 65504
f16, f32 = np.float16, np.float32


def half_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A gpu's float16 matmul: float16 operands, float32 accumulation, float16 result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflow to inf is what is being shown
        return (a.astype(f16).astype(f32) @ b.astype(f16).astype(f32)).astype(f16)


def softmax(x: np.ndarray, dtype: type) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        x = x.astype(dtype)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# attention scores (the language model, SigLIP)


def _aligned_queries_and_keys(rng: np.random.Generator, T: int, D: int, scale: float) -> tuple[np.ndarray, ...]:
    """Queries and keys that point the same way with large entries: their raw products pass float16's range."""
    direction = rng.standard_normal(D)
    q = (direction + 0.3 * rng.standard_normal((T, D))) * scale
    k = (direction + 0.3 * rng.standard_normal((T, D))) * scale
    v = rng.standard_normal((T, D))
    return q, k, v


def attention_scaled_first(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """model/attention.py's Paddle path in float16: the queries scaled before the product, the causal mask added
    and the softmax taken in float32, the probabilities back to float16 for the product with the values."""
    T, D = q.shape
    scores = half_matmul((q.astype(f16) * f16(D**-0.5)), k.T).astype(f32)
    scores += np.where(np.tril(np.ones((T, T), bool)), f32(0), np.finfo(f32).min)
    return half_matmul(softmax(scores, f32).astype(f16), v)


def attention_unguarded(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The same in float16 throughout, scaled after the product (as the textbook formula reads)."""
    T, D = q.shape
    with np.errstate(all="ignore"):
        scores = half_matmul(q, k.T) * f16(D**-0.5)
        scores = scores + np.where(np.tril(np.ones((T, T), bool)), f16(0), f16(-F16_MAX))
    return half_matmul(softmax(scores, f16), v)


def attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    T, D = q.shape
    scores = q @ k.T * D**-0.5 + np.where(np.tril(np.ones((T, T), bool)), 0.0, -np.inf)
    return softmax64(scores) @ v


def test_attention_scores_overflow_float16_unless_the_queries_are_scaled_first():
    q, k, v = _aligned_queries_and_keys(np.random.default_rng(0), T=24, D=128, scale=24.0)
    assert np.abs(q @ k.T).max() > F16_MAX > np.abs(q @ k.T * 128**-0.5).max()
    assert not np.isfinite(attention_unguarded(q, k, v)).all()
    guarded = attention_scaled_first(q, k, v).astype(np.float64)
    assert np.isfinite(guarded).all()
    # Scores this large are rounded to a few units in float16, which can swap which key a query mostly reads where
    # two are within that of each other; elsewhere the output is the reference's.
    error = np.abs(guarded - attention64(q, k, v))
    assert np.median(error) < 5e-3 and np.mean(error < 2e-2) > 0.9


@pytest.mark.parametrize("path", ["prompt", "paged"])
def test_the_models_attention_scales_the_queries_before_the_product(path, monkeypatch):
    """model/attention.py's Paddle path, run in float32 with every product it makes recorded: on queries and keys
    whose raw products pass 65504, what its products hold still fits float16."""
    from model import attention
    from model.kv_cache import PagedKVCache, RowBatch

    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    q, k, v = _aligned_queries_and_keys(np.random.default_rng(1), T=24, D=128, scale=24.0)
    products: list[float] = []
    real = paddle.matmul

    def recording(x, y, transpose_x=False, transpose_y=False, name=None):
        out = real(x, y, transpose_x=transpose_x, transpose_y=transpose_y)
        products.append(float(out.abs().max()))
        return out

    monkeypatch.setattr(paddle, "matmul", recording)
    qt, kt, vt = (paddle.to_tensor(a[None, :, None, :].astype(f32)) for a in (q, k, v))
    if path == "prompt":
        out = attention._paddle_prompt_attention(qt, kt, vt, None, causal=True)
    else:
        cache = PagedKVCache(1, 2, 16, 1, 128, "float32", host_views=False)
        rows = RowBatch.of([[0, 1]], [0])
        cache.start(rows, 24)
        cache.write(0, kt, vt)
        out = attention._paddle_paged_attention(qt, cache.keys[0], cache.values[0], rows)
    np.testing.assert_allclose(out.numpy()[0], attention64(q, k, v), rtol=0, atol=2e-3)
    assert products and max(products) < F16_MAX


# RMSNorm


def _hidden_with_massive_activations(rng: np.random.Generator) -> np.ndarray:
    """Llama hidden states: most entries small, a few channels in the hundreds (the "massive activations")."""
    x = rng.standard_normal((4, 2048))
    x[:, [17, 901]] = [[420.0, -310.0]] * 4
    return x


def rms_norm_in_float32(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """model/layer_ops.py's Paddle path: the float16 input widened, normed in float32, back to float16."""
    x32 = x.astype(f16).astype(f32)
    normed = x32 / np.sqrt((x32 * x32).mean(axis=-1, keepdims=True) + f32(eps))
    return normed.astype(f16) * weight.astype(f16)


def rms_norm_in_float16(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    with np.errstate(all="ignore"):
        x16 = x.astype(f16)
        return x16 / np.sqrt((x16 * x16).mean(axis=-1, keepdims=True, dtype=f16) + f16(eps)) * weight.astype(f16)


def test_rms_norm_overflows_in_float16_and_not_when_computed_in_float32():
    x = _hidden_with_massive_activations(np.random.default_rng(2))
    weight = np.random.default_rng(3).uniform(0.5, 1.5, 2048)
    reference = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * weight
    unguarded = rms_norm_in_float16(x, weight).astype(np.float64)
    assert not np.allclose(unguarded, reference, atol=1e-2)  # x*x passed 65504: the norm is inf, the output 0
    np.testing.assert_allclose(rms_norm_in_float32(x, weight).astype(np.float64), reference, rtol=2e-3, atol=2e-3)


def test_the_models_rms_norm_widens_half_precision_before_squaring():
    """_paddle_rms_norm squares in float32 whatever its input: a bf16 input (which Paddle's CPU can cast) comes
    out as the float32 arithmetic's result rounded, not as a product of bf16 squares."""
    from model import layer_ops

    x = _hidden_with_massive_activations(np.random.default_rng(4)).astype(f32)
    norm = paddle.nn.Layer()
    norm.weight = paddle.ones([2048], "float32")
    norm.variance_epsilon = 1e-6
    widened = layer_ops._paddle_rms_norm(paddle.to_tensor(x), norm).numpy()
    reference = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(widened, reference, rtol=1e-5, atol=1e-5)


# classifier-free guidance


def test_guidance_on_float16_logits_is_combined_in_float32():
    rng = np.random.default_rng(5)
    cond = (rng.standard_normal((2, 4096)) * 3000).astype(f16)
    uncond = (rng.standard_normal((2, 4096)) * 3000).astype(f16)
    weight = 10.0
    with np.errstate(all="ignore"):
        unguarded = uncond + f16(weight) * (cond - uncond)
    assert not np.isfinite(unguarded).all()
    combined = guided_logits(cond, uncond, weight)
    reference = uncond.astype(np.float64) + weight * (cond.astype(np.float64) - uncond.astype(np.float64))
    assert combined.dtype == np.float32 and np.isfinite(combined).all()
    np.testing.assert_allclose(combined, reference, rtol=1e-6)
    assert guided_logits(cond, uncond, 1.0) is cond  # nothing to combine


# the VQ decoder's attention


def test_the_vq_decoders_attention_scales_before_its_product(monkeypatch):
    """Its attention over 512 channels at the lowest resolution: normed features through 1x1 convolutions whose
    raw products pass 65504 must be scaled before the product and softmaxed in float32."""
    from model.vq_decoder import AttnBlock

    paddle.seed(0)
    block = AttnBlock(512)
    rng = np.random.default_rng(6)
    direction = rng.standard_normal(512).astype(f32)
    for conv in (block.q, block.k):  # every position's query and key along one direction, entries ~ 16
        conv.weight.set_value(np.broadcast_to(direction[:, None] * 16 / np.sqrt(512), (512, 512))[:, :, None, None]
                              .astype(f32).copy())
        conv.bias.set_value(np.zeros(512, f32))
    x = paddle.to_tensor(rng.standard_normal((1, 512, 6, 6)).astype(f32))
    products: list[float] = []
    real = paddle.bmm

    def recording(a, b, name=None):
        out = real(a, b)
        products.append(float(out.abs().max()))
        return out

    monkeypatch.setattr(paddle, "bmm", recording)
    block.eval()
    with paddle.no_grad():
        h = block.norm(x)
        q = block.q(h).reshape([1, 512, 36]).numpy()[0].T.astype(np.float64)
        k = block.k(h).reshape([1, 512, 36]).numpy()[0].astype(np.float64)
        assert np.abs(q @ k).max() > F16_MAX  # the raw products overflow float16
        block(x)
    assert products and max(products) < F16_MAX
