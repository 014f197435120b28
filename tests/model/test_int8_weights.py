"""JANUS_QUANTIZATION=int8 on the CPU: which weights the loader holds as int8, the converted cache that keeps them
(and refuses a foreign or corrupt one), and the whole tiny network with int8 weights against the same network
holding the dequantized weights in float32 (the wiring: equal to float32 precision) and the original weights (the
quantization's own error: small)."""

from __future__ import annotations

import json
import struct

import numpy as np
import paddle
import pytest

from model import cpu_kernels
from model.checkpoint import keys, safetensors_io
from model.checkpoint.loader import load_janus
from model.cpu_kernels import int8
from model.kv_cache import RowBatch
from model.tiny_checkpoint import build_tiny_checkpoint
from tests.model.cached_loops import greedy_image, greedy_text, rows_of

IMAGE_ID = 5


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bf16"), preset="tiny", seed=0, dtype="bfloat16")


@pytest.fixture(scope="module")
def models(bf16_dir, tmp_path_factory):
    """(int8 model, the original weights in float32, the int8 model's weights dequantized into float32)."""
    paddle.set_grad_enabled(False)
    quantized, report = load_janus(bf16_dir, cache_dir=tmp_path_factory.mktemp("cache"), keep_bf16=True,
                                   quantization="int8")
    assert (report.quantization, report.weights) == ("int8", "bfloat16")
    original, _ = load_janus(bf16_dir, cache_dir=False)
    dequantized, _ = load_janus(bf16_dir, cache_dir=False)
    layers = dict(quantized.named_sublayers())
    params = dict(dequantized.named_parameters())
    for name in keys.int8_names(quantized):
        layer = layers[name.rpartition(".")[0]]
        params[name].set_value(int8.dequantize(int8.unpair_rows(layer.weight.numpy()), layer.weight_scale.numpy(),
                                               layer.int8_group))
    return quantized, original, dequantized


def test_language_model_projections_and_generation_head_are_int8_and_nothing_else(models):
    quantized, original, _ = models
    names = keys.int8_names(quantized)
    assert "language_model.lm_head.weight" in names
    assert {"gen_head.output_mlp_projector.weight", "gen_head.vision_head.weight"} <= names
    assert any(name.endswith("mlp.down_proj.weight") for name in names)
    assert not any(name.startswith(("vision_model.", "aligner.", "gen_aligner.", "gen_vision_model.", "gen_embed"))
                   for name in names)
    exact = dict(original.named_parameters())
    layers = dict(quantized.named_sublayers())
    for name, param in quantized.named_parameters():
        if name in names:
            assert param.dtype == paddle.int8, name
            layer = layers[name.rpartition(".")[0]]
            K, N = param.shape
            assert layer.weight_scale.shape == [-(-K // int8.GROUP_SIZE), N]
            # every weight within half a step of its scale from the original
            w = int8.dequantize(int8.unpair_rows(param.numpy()), layer.weight_scale.numpy(), layer.int8_group)
            step = np.repeat(layer.weight_scale.numpy(), layer.int8_group, axis=0)[:K]
            assert (np.abs(w - exact[name].numpy()) <= step * 0.5 * (1 + 1e-5) + 1e-12).all(), name
        else:  # as without quantization: bf16 where the CPU computes from bf16, float32 elsewhere, same values
            assert param.dtype != paddle.int8, name
            np.testing.assert_array_equal(param.astype("float32").numpy(), exact[name].numpy(), err_msg=name)


def _understanding_logits(model, cfg) -> np.ndarray:
    rng = np.random.default_rng(4)
    pixels = paddle.to_tensor(rng.uniform(-1, 1, (1, 3, cfg.vision.image_size, cfg.vision.image_size))
                              .astype(np.float32))
    prompt = np.random.default_rng(1).integers(10, cfg.language.vocab_size, 9)
    ids = np.concatenate([[1, 2], np.full(cfg.vision.num_tokens, IMAGE_ID), prompt])
    embeds = model.embed_prompt(paddle.to_tensor(ids[None]), model.encode_images(pixels), IMAGE_ID)
    cache, tables = rows_of(model, 1, len(ids) + 4)
    return model.text_logits(model.extend(embeds, cache, RowBatch.of(tables, [0]))).numpy()


def _image_logits(model, prompt: np.ndarray, rows: int) -> np.ndarray:
    """Logits of `rows` rows of one prompt of 10 tokens, prefilled together: with 2 rows the backbone's 2 x 10
    activation rows and the head's 2 take the streaming kernel; with 130 every product (1,300 rows, then 130) takes
    the many-row entry (MKL on dequantized panels; the blocked kernel without MKL)."""
    cache, tables = rows_of(model, rows, 32)
    hidden = model.extend(model.embed_text(paddle.to_tensor(np.stack([prompt] * rows))), cache,
                          RowBatch.of(tables, [0] * rows))
    return model.image_logits(hidden[:, -1]).numpy()


def test_int8_network_computes_what_its_dequantized_weights_do(models):
    quantized, _, dequantized = models
    cfg = quantized.cfg
    # The streaming kernel (up to 127 activation rows) rounds activations to int16 on AVX2 and AVX-512BW CPUs: 1/65534
    # of a chunk's largest |x|, which moves these logits by up to ~1e-3 (measured 2.4e-4 for two decode rows, 9.4e-4 for
    # the understanding prompt's prefill, under 128 positions on this tiny network): far under what a lost weight
    # row or a wrong scale does, and under the weights' own rounding (the next test allows 2% of the logits' range).
    lib = cpu_kernels.library()
    integer = bool(lib) and lib.janus_int8_rows_activation_bits() == 16
    np.testing.assert_allclose(_understanding_logits(quantized, cfg), _understanding_logits(dequantized, cfg),
                               rtol=0, atol=2e-3 if integer else 1e-4)
    prompt = np.random.default_rng(3).integers(10, cfg.language.vocab_size, 10)
    for rows, atol in ((2, 1e-3 if integer else 1e-4), (130, 1e-4)):
        np.testing.assert_allclose(_image_logits(quantized, prompt, rows), _image_logits(dequantized, prompt, rows),
                                   rtol=0, atol=atol)
    texts = [greedy_text(m, prompt, None, IMAGE_ID, eos_id=-1, max_new_tokens=16) for m in (quantized, dequantized)]
    assert texts[0] == texts[1] and len(texts[0]) == 16
    tokens = [greedy_image(m, prompt, pad_id=0, cfg_weight=5.0) for m in (quantized, dequantized)]
    np.testing.assert_array_equal(tokens[0], tokens[1])


def test_int8_logits_stay_close_to_the_original_weights(models):
    """The quantization's own error on the tiny random network: a few parts in a thousand of the logits' range."""
    quantized, original, _ = models
    cfg = quantized.cfg
    ours, exact = _understanding_logits(quantized, cfg), _understanding_logits(original, cfg)
    assert 0 < np.abs(ours - exact).max() < 0.02 * np.abs(exact).max()


def _cache_file(cache) -> object:
    (path,) = cache.rglob("weights.safetensors")
    return path


def test_int8_cache_holds_int8_and_is_read_back_on_the_next_start(bf16_dir, tmp_path):
    first, report1 = load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True, quantization="int8")
    second, report2 = load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True, quantization="int8")
    assert (report1.source, report2.source) == ("converted", "cache")
    header, _ = safetensors_io.read_header(_cache_file(tmp_path))
    names = keys.int8_names(first)
    assert {name for name, info in header.items() if info["dtype"] == "I8"} == names
    assert {name for name, info in header.items() if name.endswith("_scale")} == {keys.scale_name(n) for n in names}
    assert safetensors_io.read_metadata(_cache_file(tmp_path))["quantization"] == f"int8-g{int8.GROUP_SIZE}-pairs"
    again = dict(second.named_parameters())
    for name, param in first.named_parameters():
        np.testing.assert_array_equal(param.astype("float32").numpy(), again[name].astype("float32").numpy())
    # the unquantized cache is another file: a server with `none` is unchanged
    _, plain = load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True)
    assert (plain.source, plain.quantization) == ("converted", "none")
    assert len(list(tmp_path.rglob("weights.safetensors"))) == 2


def _rewrite_header(path, change) -> None:
    """Edit a cache file's header in place (its length kept: the header is padded with spaces)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    change(header)
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= length
    path.write_bytes(raw[:8] + blob + b" " * (length - len(blob)) + raw[8 + length:])


def _foreign_quantization(header) -> None:
    header["__metadata__"]["quantization"] = "int8-g32"


def _rows_held_one_by_one(header) -> None:
    """What a cache written before the weights were held in pairs of rows says of itself."""
    header["__metadata__"]["quantization"] = f"int8-g{int8.GROUP_SIZE}"


def _int8_weight_stored_as_unsigned(header) -> None:
    header["language_model.lm_head.weight"]["dtype"] = "U8"


@pytest.mark.parametrize("damage", ["truncated", "foreign quantization", "rows one by one", "unsigned bytes",
                                    "garbage header"])
def test_a_corrupt_or_foreign_int8_cache_is_refused_and_rebuilt(bf16_dir, tmp_path, damage, caplog):
    reference, _ = load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True, quantization="int8")
    path = _cache_file(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "foreign quantization":
        _rewrite_header(path, _foreign_quantization)
    elif damage == "rows one by one":
        _rewrite_header(path, _rows_held_one_by_one)
    elif damage == "unsigned bytes":
        _rewrite_header(path, _int8_weight_stored_as_unsigned)
    else:
        path.write_bytes(b"\xff" * 64 + path.read_bytes()[64:])
    with caplog.at_level("WARNING"):
        model, report = load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True, quantization="int8")
    assert report.source == "converted"
    assert "cache" in caplog.text
    exact = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        np.testing.assert_array_equal(param.astype("float32").numpy(), exact[name].astype("float32").numpy())
    assert load_janus(bf16_dir, cache_dir=tmp_path, keep_bf16=True, quantization="int8")[1].source == "cache"


def test_float32_checkpoint_quantizes_the_same_way(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", preset="tiny", seed=1)
    model, report = load_janus(directory, cache_dir=False, quantization="int8")
    assert (report.quantization, report.weights) == ("int8", "float32")
    assert model.language_model.lm_head.weight.dtype == paddle.int8


@pytest.mark.parametrize(("dtype", "quantization", "message"), [
    ("float32", "int4", "quantization 'int4' is not supported"),
    ("bfloat16", "int8", "on the cpu are computed in float32, not bfloat16"),
])
def test_unsupported_quantizations_are_refused(bf16_dir, dtype, quantization, message):
    with pytest.raises(ValueError, match=message):
        load_janus(bf16_dir, dtype=dtype, cache_dir=False, quantization=quantization)
