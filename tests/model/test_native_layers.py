"""Decode steps and windows run as plain kernel calls (`model.native_layers`) give what the general layer loop gives,
bit for bit: the hidden states returned and every key and value written, with bf16, int8 and float32 weights."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model import cpu_kernels, native_layers
from model.checkpoint.loader import load_janus
from model.kv_cache import RowBatch
from model.tiny_checkpoint import build_tiny_checkpoint

BLOCK = 4
FORWARD = native_layers.forward


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The tiny checkpoint stored as bf16, held three ways."""
    if cpu_kernels.library() is None:
        pytest.skip("the CPU kernels are not available")
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp("bf16-ckpt"), preset="tiny", seed=3, dtype="bfloat16")
    return {"bf16": load_janus(directory, cache_dir=False, keep_bf16=True)[0],
            "int8": load_janus(directory, cache_dir=False, quantization="int8")[0],
            "float32": load_janus(directory, cache_dir=False)[0]}


class Spy:
    """Counts the forwards `native_layers.forward` ran itself (returned a result for), or turns it off."""

    def __init__(self, monkeypatch, enabled: bool) -> None:
        self.ran = 0

        def forward(*args, **kwargs):
            if not enabled:
                return None
            out = FORWARD(*args, **kwargs)
            self.ran += out is not None
            return out
        monkeypatch.setattr(native_layers, "forward", forward)


def _steps(model, monkeypatch, native: bool, rows: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    """A prefill of `rows` rows of different lengths, three decode steps, a left-padded window of three positions
    with and without last_only, two more decode steps: (each forward's hidden states, every layer's pools, forwards
    the kernels ran alone)."""
    spy = Spy(monkeypatch, native)
    rng = np.random.default_rng(7)
    cache = model.new_cache(64, BLOCK)
    order = np.random.default_rng(1).permutation(64).tolist()
    lengths = [20 + 3 * r for r in range(rows)]  # prompts longer than a window: the general loop writes them
    tables = [[order.pop() for _ in range(12)] for _ in range(rows)]
    outputs = []

    def forward(ids: np.ndarray, cached: list[int], pad: list[int] | None = None, last_only: bool = False) -> None:
        embeds = model.embed_text(paddle.to_tensor(ids))
        outputs.append(model.extend(embeds, cache, RowBatch.of(tables, cached, pad), last_only).numpy())

    width = max(lengths)
    prompt = rng.integers(0, 500, (rows, width))
    forward(prompt, [0] * rows, [width - n for n in lengths])
    cached = list(lengths)
    for _ in range(3):
        forward(rng.integers(0, 500, (rows, 1)), cached)
        cached = [n + 1 for n in cached]
    for last_only in (False, True):  # row r appends 3 - r % 3 positions, left-padded to 3
        appended = [3 - r % 3 for r in range(rows)]
        forward(rng.integers(0, 500, (rows, 3)), cached, [3 - n for n in appended], last_only)
        cached = [c + n for c, n in zip(cached, appended, strict=True)]
    for _ in range(2):
        forward(rng.integers(0, 500, (rows, 1)), cached)
        cached = [n + 1 for n in cached]
    pools = np.stack([np.stack([k.numpy(), v.numpy()]) for k, v in zip(cache.keys, cache.values, strict=True)])
    return outputs, pools, spy.ran


@pytest.mark.parametrize("weights", ["bf16", "int8", "float32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_decode_steps_and_windows_equal_the_general_loop_bit_for_bit(models, monkeypatch, weights, rows):
    model = models[weights]
    general, general_pools, ran = _steps(model, monkeypatch, native=False, rows=rows)
    assert ran == 0
    native, native_pools, ran = _steps(model, monkeypatch, native=True, rows=rows)
    # the prefill takes the general loop, the decode steps the kernel calls, and so do the windows but where
    # float32 weights meet more rows than their few-row kernel takes (3 rows x 3 positions)
    windows = 2 if weights != "float32" or 3 * rows <= cpu_kernels.LINEAR_MAX_ROWS else 0
    assert ran == 5 + windows
    assert len(native) == len(general) == 8
    for step, (ours, theirs) in enumerate(zip(native, general, strict=True)):
        assert ours.shape == theirs.shape, step
        assert np.array_equal(ours, theirs), f"forward {step}: largest difference {np.abs(ours - theirs).max()}"
    assert np.array_equal(native_pools, general_pools)


def test_forwards_the_kernels_cannot_run_whole_return_none(models, monkeypatch):
    model = models["float32"]
    backbone = model.backbone
    tables = [[0, 1, 2, 3, 4, 5, 6, 7]] * 6

    def attempt(rows: int, T: int) -> paddle.Tensor | None:
        cache = model.new_cache(8, BLOCK)
        batch = RowBatch.of(tables[:rows], [0] * rows)
        cache.start(batch, T)
        embeds = model.embed_text(paddle.to_tensor(np.arange(rows * T).reshape(rows, T)))
        rotary = backbone.rotary
        return native_layers.forward(backbone.lm, backbone.cfg, embeds, cache, batch, batch.positions(T),
                                     (rotary.half_cos, rotary.half_sin), False)

    assert attempt(2, 1) is not None
    assert attempt(6, 1) is None  # float32 weights past the rows of their few-row kernel: paddle.matmul
    assert attempt(1, 17) is None  # longer than a window: the prompt path of attention
    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    assert attempt(2, 1) is None


def test_embeddings_in_a_strided_view_give_what_contiguous_ones_give(models, monkeypatch):
    model = models["bf16"]
    ids = paddle.to_tensor(np.random.default_rng(2).integers(0, 500, (3, 1)))
    embeds = model.embed_text(ids)
    wide = paddle.concat([embeds, embeds * 2], axis=-1)
    strided = wide[:, :, :embeds.shape[-1]]
    if strided.is_contiguous():
        pytest.skip("this Paddle copies slices")
    spy = Spy(monkeypatch, enabled=True)
    outputs = []
    for given in (embeds, strided):
        cache = model.new_cache(16, BLOCK)
        rows = RowBatch.of([[0, 1], [2, 3], [4, 5]], [0, 0, 0])
        outputs.append(model.extend(given, cache, rows).numpy())
    assert spy.ran == 2
    assert np.array_equal(outputs[0], outputs[1])
