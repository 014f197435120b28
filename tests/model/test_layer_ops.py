"""The CPU kernels for norms, rotary embedding and bias against Paddle's ops, and the patch embedding against
the convolution it replaces."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from model.layer_ops import Rotary, add_bias_, add_rms_norm, linear, rms_norm
from model.siglip import PatchEmbed


@pytest.fixture
def paddle_ops(monkeypatch):
    """Run a callable through Paddle's ops instead of the kernels."""

    def run(fn, *args):
        with monkeypatch.context() as patch:
            patch.setenv("JANUS_CPU_KERNELS", "off")
            return fn(*args)

    return run


def _norm(dim: int, seed: int) -> nn.Layer:
    norm = nn.Layer()
    norm.weight = paddle.to_tensor(np.random.default_rng(seed).uniform(0.5, 1.5, dim).astype(np.float32))
    norm.variance_epsilon = 1e-6
    return norm


def _tensor(rng: np.random.Generator, *shape: int) -> paddle.Tensor:
    return paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("shape", [(3, 5, 64), (1, 1, 12), (2, 700, 128)])
def test_rms_norm_matches_paddle(paddle_ops, shape):
    x = _tensor(np.random.default_rng(0), *shape)
    norm = _norm(shape[-1], 1)
    np.testing.assert_allclose(rms_norm(x, norm).numpy(), paddle_ops(rms_norm, x, norm).numpy(), rtol=1e-5, atol=1e-6)


def test_add_rms_norm_returns_the_sum_and_its_norm_and_leaves_inputs_alone(paddle_ops):
    rng = np.random.default_rng(2)
    residual, delta = _tensor(rng, 4, 3, 40), _tensor(rng, 4, 3, 40)
    before = residual.numpy().copy()
    norm = _norm(40, 3)
    total, normed = add_rms_norm(residual, delta, norm)
    ref_total, ref_normed = paddle_ops(add_rms_norm, residual, delta, norm)
    np.testing.assert_allclose(total.numpy(), ref_total.numpy(), atol=1e-6)
    np.testing.assert_allclose(normed.numpy(), ref_normed.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(residual.numpy(), before)


@pytest.mark.parametrize(("heads", "D"), [(4, 16), (2, 64), (1, 8)])
def test_rotary_matches_paddle_at_mixed_positions(paddle_ops, heads, D):
    rotary = Rotary(D, 512, 10000.0)
    rng = np.random.default_rng(heads * D)
    positions = rng.integers(0, 512, (3, 7))
    x = rng.standard_normal((3, 7, heads, D)).astype(np.float32)
    fused = rotary.plan(positions, paddle.float32, heads).apply(paddle.to_tensor(x)).numpy()
    reference = paddle_ops(lambda: rotary.plan(positions, paddle.float32, heads).apply(paddle.to_tensor(x))).numpy()
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=2e-6)


def test_rotary_at_position_zero_is_the_identity():
    rotary = Rotary(16, 8, 10000.0)
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 16)).astype(np.float32)
    out = rotary.plan(np.zeros((1, 2), np.int64), paddle.float32, 3).apply(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(out, x, atol=1e-7)


def test_linear_with_bias_matches_paddles_layer(paddle_ops):
    layer = nn.Linear(24, 40)
    x = _tensor(np.random.default_rng(5), 2, 9, 24)
    np.testing.assert_allclose(linear(layer, x).numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(paddle_ops(linear, layer, x).numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-6)


def test_bias_add_broadcasts_over_every_leading_axis():
    rng = np.random.default_rng(6)
    x, bias = rng.standard_normal((2, 3, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    np.testing.assert_allclose(add_bias_(paddle.to_tensor(x), paddle.to_tensor(bias)).numpy(), x + bias, atol=1e-7)


@pytest.mark.parametrize("cpu_path", [True, False])
def test_patch_embedding_equals_the_strided_convolution(cpu_path):
    embed = PatchEmbed(patch_size=8, width=12)
    pixels = _tensor(np.random.default_rng(7), 2, 3, 32, 64)[:, :, :, :32]  # a strided view: Paddle's transposes
    assert not pixels.is_contiguous()
    if cpu_path:
        pixels = pixels.contiguous()
    conv = embed.proj(pixels.contiguous())  # [B, width, 4, 4], with the bias
    expected = conv.flatten(2).transpose([0, 2, 1]).numpy() - embed.proj.bias.numpy()
    np.testing.assert_allclose(embed(pixels).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [5, 64, 70001])
def test_swiglu_matches_paddle_including_large_gates(paddle_ops, n):
    from model.layer_ops import swiglu

    rng = np.random.default_rng(n)
    gate = rng.standard_normal(n).astype(np.float32) * 8
    gate[:3] = [-100.0, 100.0, 0.0]
    up = rng.standard_normal(n).astype(np.float32)
    ours = swiglu(paddle.to_tensor(gate), paddle.to_tensor(up)).numpy()
    theirs = paddle_ops(swiglu, paddle.to_tensor(gate), paddle.to_tensor(up)).numpy()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(("fan_in", "fan_out", "bias"), [(64, 40, True), (7, 13, False), (300, 260, True)])
def test_linear_for_few_rows_matches_paddle(paddle_ops, rows, fan_in, fan_out, bias):
    # up to LINEAR_MAX_ROWS rows take the row-streaming kernel (odd sizes: tails of every loop), more the matmul
    layer = nn.Linear(fan_in, fan_out, bias_attr=None if bias else False)
    x = _tensor(np.random.default_rng(rows), rows, 1, fan_in)
    np.testing.assert_allclose(linear(layer, x).numpy(), paddle_ops(linear, layer, x).numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rows", [1, 5, 8, 19])
def test_row_streaming_kernel_at_any_row_count(rows):
    from model import cpu_kernels
    from model.host_memory import host_view

    rng = np.random.default_rng(rows)
    x, w, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((rows, 203), (203, 77), (77,)))
    out = paddle.empty([rows, 77], "float32")
    tensors = [paddle.to_tensor(a) for a in (x, w, bias)]
    cpu_kernels.library().janus_linear_rows(*(t.data_ptr() for t in tensors[:3]), out.data_ptr(), rows, 203, 77)
    np.testing.assert_allclose(host_view(out), x @ w + bias, rtol=2e-5, atol=2e-5)


def test_gelu_matches_paddles_exact_gelu(paddle_ops):
    from model.layer_ops import gelu

    x = np.concatenate([np.linspace(-12, 12, 4001), [-1e4, 1e4, 0.0], np.random.default_rng(8).standard_normal(99)])
    x = paddle.to_tensor(x.astype(np.float32))
    np.testing.assert_allclose(gelu(x).numpy(), paddle_ops(gelu, x).numpy(), rtol=1e-5, atol=3e-7)


def test_rotary_refuses_positions_past_its_table():
    rotary = Rotary(16, 8, 10000.0)
    with pytest.raises(ValueError, match=r"rotary positions must lie in \[0, 8\)"):
        rotary.plan(np.array([[3, 8]]), paddle.float32, 2)
