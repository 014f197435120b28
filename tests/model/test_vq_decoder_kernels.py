"""The VQ decoder's channels-last CPU kernels (convolution, GroupNorm + swish) against Paddle's own ops, and the
whole decoder with the kernels against the same decoder on Paddle's ops; its pixels are the same whatever the thread
count it runs with and whichever images it decodes together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from model import conv_ops, cpu_kernels
from model.config import VQConfig
from model.janus import pixels_to_uint8
from model.vq_decoder import VQDecoder
from service.engine.cpu_threads import set_thread_budget

T = TypeVar("T")


@pytest.fixture
def lib(kernel_build):
    return cpu_kernels.library()


def _array(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv(rng: np.random.Generator, cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2D:
    conv = nn.Conv2D(cin, cout, k, padding=k // 2, bias_attr=None if bias else False)
    conv.weight.set_value(_array(rng, cout, cin, k, k, scale=(cin * k * k) ** -0.5))
    if bias:
        conv.bias.set_value(_array(rng, cout))
    return conv


def _nchw(x: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(x.transpose(0, 3, 1, 2).copy())


def _nhwc(x: paddle.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("B", "H", "W", "cin", "cout", "k"), [
    (1, 7, 5, 3, 16, 3),  # three input channels, odd sizes
    (2, 9, 11, 20, 13, 3),  # batch of two; neither channel count a multiple of 8
    (3, 4, 4, 32, 64, 3),
    (1, 24, 24, 128, 128, 3),  # several tiles of output pixels
    (1, 25, 23, 64, 96, 3),  # several tiles, the last one shorter
    (2, 6, 5, 40, 3, 3),  # three output channels, like the decoder's last convolution
    (2, 10, 7, 24, 40, 1),
    (1, 17, 13, 13, 5, 1),
])
def test_conv2d_matches_paddle(lib, B, H, W, cin, cout, k):
    rng = np.random.default_rng(B * 1000 + cin * 10 + cout + k)
    conv, x = _conv(rng, cin, cout, k), _array(rng, B, H, W, cin)
    ours = conv_ops.conv2d(lib, paddle.to_tensor(x), conv).numpy()
    reference = _nhwc(conv(_nchw(x)))
    assert ours.shape == (B, H, W, cout)
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("B", "H", "W", "cin", "cout"), [(1, 3, 4, 8, 8), (2, 6, 5, 20, 13), (1, 12, 12, 64, 64)])
def test_conv2d_of_the_nearest_upsampled_input_matches_paddle(lib, B, H, W, cin, cout):
    rng = np.random.default_rng(H * W + cin)
    conv, x = _conv(rng, cin, cout, 3), _array(rng, B, H, W, cin)
    ours = conv_ops.conv2d(lib, paddle.to_tensor(x), conv, upsample=True).numpy()
    reference = _nhwc(conv(F.interpolate(_nchw(x), scale_factor=2.0, mode="nearest")))
    assert ours.shape == (B, 2 * H, 2 * W, cout)
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_adds_the_residual_without_bias(lib, k):
    rng = np.random.default_rng(k)
    conv, x, residual = _conv(rng, 12, 20, k, bias=False), _array(rng, 2, 5, 6, 12), _array(rng, 2, 5, 6, 20)
    ours = conv_ops.conv2d(lib, paddle.to_tensor(x), conv, residual=paddle.to_tensor(residual)).numpy()
    reference = _nhwc(conv(_nchw(x))) + residual
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-5)


def test_conv2d_accumulates_onto_its_own_earlier_output(lib):
    # the decoder passes a shortcut convolution's fresh output as the residual: the sum lands in that buffer
    rng = np.random.default_rng(5)
    shortcut, conv = _conv(rng, 16, 24, 1), _conv(rng, 8, 24, 3)
    x, h = _array(rng, 1, 6, 6, 16), _array(rng, 1, 6, 6, 8)
    first = conv_ops.conv2d(lib, paddle.to_tensor(x), shortcut)
    ours = conv_ops.conv2d(lib, paddle.to_tensor(h), conv, residual=first).numpy()
    reference = _nhwc(shortcut(_nchw(x))) + _nhwc(conv(_nchw(h)))
    np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [
    nn.Conv2D(4, 4, 3, padding=1, stride=2),
    nn.Conv2D(4, 4, 3, padding=0),
    nn.Conv2D(4, 4, 5, padding=2),
    nn.Conv2D(4, 4, 3, padding=1, dilation=2),
])
def test_conv2d_refuses_what_it_does_not_compute(conv):
    with pytest.raises(ValueError, match="stride-1 'same'"):
        conv_ops.conv2d(cpu_kernels.library(), paddle.zeros([1, 8, 8, 4]), conv)


@pytest.mark.parametrize(("B", "H", "W", "C", "groups"), [
    (1, 5, 7, 32, 32),  # one channel per group
    (2, 9, 8, 64, 32),
    (3, 4, 6, 96, 8),
    (1, 48, 48, 128, 32),  # many chunks of pixels per thread
])
@pytest.mark.parametrize("swish", [True, False])
def test_group_norm_matches_paddle(B, H, W, C, groups, swish):
    rng = np.random.default_rng(C + H)
    # an offset per channel and a wide spread: the variance must not cancel away
    x = _array(rng, B, H, W, C, scale=3.0) + rng.uniform(-20, 20, C).astype(np.float32)
    norm = nn.GroupNorm(groups, C, epsilon=1e-6)
    norm.weight.set_value(rng.uniform(0.5, 1.5, C).astype(np.float32))
    norm.bias.set_value(_array(rng, C))
    ours = conv_ops.group_norm(cpu_kernels.library(), paddle.to_tensor(x), norm, swish).numpy()
    reference = norm(_nchw(x))
    if swish:
        reference = reference * F.sigmoid(reference)
    np.testing.assert_allclose(ours, _nhwc(reference), atol=3e-5, rtol=1e-5)


def _random_decoder(cfg: VQConfig, seed: int) -> VQDecoder:
    paddle.seed(seed)
    decoder = VQDecoder(cfg)
    rng = np.random.default_rng(seed)
    for name, param in decoder.named_parameters():  # norms too: not just their identity initialisation
        if "norm" in name:
            param.set_value(rng.uniform(0.5, 1.5, param.shape).astype(np.float32) if name.endswith("weight")
                            else _array(rng, *param.shape, scale=0.1))
    decoder.eval()
    return decoder


def _decode_both_ways(decoder: VQDecoder, tokens: paddle.Tensor, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    calls = []
    real_conv2d = conv_ops.conv2d
    monkeypatch.setattr(conv_ops, "conv2d", lambda *args, **kwargs: calls.append(1) or real_conv2d(*args, **kwargs))
    with paddle.no_grad():
        fused = decoder(tokens).numpy()
        assert calls, "the kernel path did not run"
        calls.clear()
        with monkeypatch.context() as patch:
            patch.setenv("JANUS_CPU_KERNELS", "off")
            plain = decoder(tokens).numpy()
        assert not calls, "the Paddle path ran kernels"
    return fused, plain


def test_tiny_checkpoint_decoder_gives_paddles_pixels(tiny_model, monkeypatch):
    decoder = tiny_model.gen_vision_model
    cfg = decoder.cfg
    tokens = paddle.to_tensor(np.random.default_rng(1).integers(0, cfg.image_token_size, (3, cfg.grid ** 2)))
    fused, plain = _decode_both_ways(decoder, tokens, monkeypatch)
    assert fused.shape == (3, 3, cfg.image_size, cfg.image_size)
    np.testing.assert_allclose(fused, plain, atol=1e-5, rtol=1e-5)


def test_mid_size_decoder_gives_paddles_pixels(monkeypatch):
    # every kind of block at several widths: attention at 8x8, widening and narrowing shortcuts, three upsamplings
    cfg = VQConfig(image_token_size=512, n_embed=8, ch=32, ch_mult=[1, 2, 2, 4], z_channels=64, num_res_blocks=2,
                   image_size=64)
    decoder = _random_decoder(cfg, seed=3)
    tokens = paddle.to_tensor(np.random.default_rng(2).integers(0, cfg.image_token_size, (2, cfg.grid ** 2)))
    fused, plain = _decode_both_ways(decoder, tokens, monkeypatch)
    assert fused.shape == (2, 3, 64, 64)
    assert plain.std() > 0.1  # a real image-like signal, not a vanishing one
    np.testing.assert_allclose(fused, plain, atol=1e-4, rtol=1e-4)


def _with_threads(threads: int, work: Callable[[], T]) -> T:
    """work() in a thread of its own whose OpenMP and MKL budget is `threads`, as the service's image decoder thread
    runs (the budget is kept per thread, so the caller's stays as it was)."""
    out: list[T] = []

    def run() -> None:
        set_thread_budget(threads)
        with paddle.no_grad():
            out.append(work())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert out, "the work failed (see the log)"
    return out[0]


@pytest.fixture(scope="module")
def demo_decoder() -> VQDecoder:
    """The VQ decoder of the demo checkpoint (the service's built-in model): 384 px, ch 32, ch_mult [1, 1, 2, 2, 4]."""
    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import demo_checkpoint_dir

    return load_janus(demo_checkpoint_dir(), cache_dir=False)[0].gen_vision_model


def _demo_tokens(decoder: VQDecoder, images: int, seed: int) -> paddle.Tensor:
    cfg = decoder.cfg
    return paddle.to_tensor(np.random.default_rng(seed).integers(0, cfg.image_token_size, (images, cfg.grid ** 2)))


@pytest.mark.parametrize("threads", [2, 3])
def test_demo_decoder_gives_the_same_bytes_whatever_its_thread_count(kernel_build, demo_decoder, threads):
    # The service gives its image decoder more or fewer threads as other requests come and go; a seed must still
    # give the same image bytes. Before: ~40 of the 442,368 values moved by one level between 1 and 2 threads.
    tokens = _demo_tokens(demo_decoder, 1, seed=7)
    one = _with_threads(1, lambda: demo_decoder(tokens).numpy())
    more = _with_threads(threads, lambda: demo_decoder(tokens).numpy())
    image_bytes = [pixels_to_uint8(pixels.transpose(0, 2, 3, 1)) for pixels in (more, one)]
    np.testing.assert_array_equal(*image_bytes)
    # and not only the bytes: every value, including those far from a level boundary, is summed in the same order
    np.testing.assert_array_equal(more, one)


def test_demo_decoder_gives_an_image_the_same_pixels_alone_or_with_others(demo_decoder):
    # images are decoded one per call or several at once (JANUS_IMAGES_PER_DECODE in the engine): no pixel changes
    tokens = _demo_tokens(demo_decoder, 3, seed=8)
    together = _with_threads(2, lambda: demo_decoder(tokens).numpy())
    alone = np.concatenate([_with_threads(2, lambda i=i: demo_decoder(tokens[i:i + 1]).numpy()) for i in range(3)])
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize(("B", "H", "W", "cin", "cout", "k", "upsample"), [
    (1, 24, 24, 128, 128, 3, False),  # a small image: its pixels were split into as many tiles as threads
    (2, 24, 24, 64, 64, 1, False),
    (1, 40, 40, 32, 3, 3, False),  # three output channels, like the decoder's last convolution
    (1, 20, 20, 32, 32, 3, True),
])
def test_conv2d_gives_the_same_values_whatever_the_thread_count(kernel_build, B, H, W, cin, cout, k, upsample):
    lib = cpu_kernels.library()
    rng = np.random.default_rng(H + cin + cout)
    conv, x = _conv(rng, cin, cout, k), paddle.to_tensor(_array(rng, B, H, W, cin))
    results = [_with_threads(n, lambda: conv_ops.conv2d(lib, x, conv, upsample=upsample).numpy()) for n in (1, 2, 3)]
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


@pytest.mark.parametrize(("B", "H", "W", "C"), [(1, 96, 96, 64), (2, 37, 29, 32)])
def test_group_norm_gives_the_same_values_whatever_the_thread_count(B, H, W, C):
    rng = np.random.default_rng(H * W)
    x = paddle.to_tensor(_array(rng, B, H, W, C, scale=3.0) + rng.uniform(-20, 20, C).astype(np.float32))
    norm = nn.GroupNorm(32, C, epsilon=1e-6)
    norm.bias.set_value(_array(rng, C))
    lib = cpu_kernels.library()
    results = [_with_threads(n, lambda: conv_ops.group_norm(lib, x, norm, swish=True).numpy()) for n in (1, 2, 3)]
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])
