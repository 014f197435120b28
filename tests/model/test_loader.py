"""Loading every published weight layout, the converted-weights cache, and each named loading error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import CheckpointError, keys, safetensors_io
from model.checkpoint.loader import load_janus
from model.tiny_checkpoint import build_tiny_checkpoint, random_weights, write_weights
from tests.oracle.client import oracle_python

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _weights(model) -> dict[str, np.ndarray]:
    return {name: p.numpy() for name, p in model.named_parameters()}


def _expected_weights(model, cfg_seed: int = 0) -> dict[str, np.ndarray]:
    """The builder's arrays, mapped to Paddle names and layout: what a correct load must produce."""
    transposed = keys.transposed_names(model)
    out = {}
    for key, arr in random_weights(model.cfg, cfg_seed).items():
        if keys.is_unused(key):
            continue
        name = keys.to_paddle_name(key)
        out[name] = arr.T if name in transposed else arr
    return out


def _assert_same(model, expected: dict[str, np.ndarray]) -> None:
    got = _weights(model)
    assert set(got) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


def _to_torch_bin(directory: Path, shards: int) -> None:
    python = oracle_python()
    if python is None:
        pytest.skip("torch is needed to write .bin test files (oracle venv missing)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([str(python), str(TOOLS / "safetensors_to_torch_bin.py"), str(directory), "--shards", str(shards)],
                   check=True, env=env, capture_output=True)


@pytest.mark.parametrize(("layout", "shards"), [("safetensors", 1), ("safetensors", 3), ("bin", 1), ("bin", 2)])
def test_each_published_layout_loads_the_same_weights(tmp_path, layout, shards):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", shards=shards if layout == "safetensors" else 1)
    if layout == "bin":
        _to_torch_bin(directory, shards)
        assert not (directory / "model.safetensors").exists()
    model, report = load_janus(directory, cache_dir=False)
    assert report.source == "converted (not cached)"
    _assert_same(model, _expected_weights(model))


def test_bf16_checkpoint_loads_without_loss(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", dtype="bfloat16")
    model, _ = load_janus(directory, cache_dir=False)
    stored = safetensors_io.load(directory / "model.safetensors")
    transposed = keys.transposed_names(model)
    got = _weights(model)
    for key, (bits, code) in stored.items():
        if keys.is_unused(key):
            continue
        assert code == "BF16"
        widened = (bits.astype(np.uint32) << 16).view(np.float32)
        name = keys.to_paddle_name(key)
        np.testing.assert_array_equal(got[name], widened.T if name in transposed else widened, err_msg=name)


def test_second_load_uses_the_converted_cache_and_a_changed_file_invalidates_it(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt")
    cache = tmp_path / "cache"
    first, report1 = load_janus(directory, cache_dir=cache)
    second, report2 = load_janus(directory, cache_dir=cache)
    assert (report1.source, report2.source) == ("converted", "cache")
    _assert_same(second, _weights(first))
    build_tiny_checkpoint(directory, seed=7)  # new weights, same file names
    third, report3 = load_janus(directory, cache_dir=cache)
    assert report3.source == "converted"
    _assert_same(third, _expected_weights(third, cfg_seed=7))


def _rewrite(directory: Path, edit) -> None:
    tensors = {k: (a, c) for k, (a, c) in safetensors_io.load(directory / "model.safetensors").items()}
    tensors = {k: (np.array(a), c) for k, (a, c) in tensors.items()}
    edit(tensors)
    write_weights(directory, tensors)


@pytest.fixture
def fresh_dir(tmp_path) -> Path:
    return build_tiny_checkpoint(tmp_path / "ckpt")


def test_missing_key_is_named(fresh_dir):
    _rewrite(fresh_dir, lambda t: t.pop("gen_head.vision_head.bias"))
    with pytest.raises(CheckpointError, match=r"missing key.*'gen_head.vision_head.bias'.*model.safetensors"):
        load_janus(fresh_dir, cache_dir=False)


def test_unexpected_key_is_named_with_its_file(fresh_dir):
    _rewrite(fresh_dir, lambda t: t.__setitem__("language_model.model.extra.weight", (np.zeros(3, np.float32), "F32")))
    with pytest.raises(CheckpointError, match=r"model.safetensors: unexpected key 'language_model.model.extra.weight'"):
        load_janus(fresh_dir, cache_dir=False)


def test_wrong_shape_names_key_expected_found_and_file(fresh_dir):
    _rewrite(fresh_dir, lambda t: t.__setitem__("gen_embed.weight", (np.zeros((256, 4), np.float32), "F32")))
    with pytest.raises(CheckpointError,
                       match=r"model.safetensors: key 'gen_embed.weight' has shape \[256, 4\], expected \[256, 8\]"):
        load_janus(fresh_dir, cache_dir=False)


def test_wrong_shape_of_a_linear_weight_is_reported_in_checkpoint_layout(fresh_dir):
    bad = (np.zeros((256, 32), np.float32), "F32")
    _rewrite(fresh_dir, lambda t: t.__setitem__("gen_head.vision_head.weight", bad))
    expected = r"'gen_head.vision_head.weight' has shape \[256, 32\], expected \[256, 64\]"
    with pytest.raises(CheckpointError, match=expected):
        load_janus(fresh_dir, cache_dir=False)


def test_unused_published_keys_are_skipped(fresh_dir):
    stored = safetensors_io.load(fresh_dir / "model.safetensors")
    assert any(k.startswith("gen_vision_model.encoder.") for k in stored)
    assert "gen_vision_model.quantize.codebook_used" in stored
    model, _ = load_janus(fresh_dir, cache_dir=False)
    assert not any("encoder" in name or "attn_pool" in name for name, _ in model.named_parameters())


def test_missing_weights_file_is_named(fresh_dir):
    (fresh_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*model.safetensors, pytorch_model.bin"):
        load_janus(fresh_dir, cache_dir=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_file_is_named(fresh_dir, damage):
    path = fresh_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\x00\x01garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors"):
        load_janus(fresh_dir, cache_dir=False)


def test_corrupt_torch_bin_is_named(fresh_dir):
    (fresh_dir / "model.safetensors").unlink()
    (fresh_dir / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot read torch checkpoint"):
        load_janus(fresh_dir, cache_dir=False)


def test_index_naming_a_missing_shard_is_refused(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"names shard files that do not exist: model-00002-of-00002.safetensors"):
        load_janus(directory, cache_dir=False)


def test_corrupt_index_is_named(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", shards=2)
    (directory / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: corrupt index"):
        load_janus(directory, cache_dir=False)


def test_missing_config_and_directory_are_named(tmp_path, fresh_dir):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_janus(tmp_path / "nowhere", cache_dir=False)
    (fresh_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_janus(fresh_dir, cache_dir=False)


def test_config_with_inconsistent_widths_is_refused(fresh_dir):
    raw = json.loads((fresh_dir / "config.json").read_text())
    raw["aligner_config"]["params"]["n_embed"] = 999
    (fresh_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"aligner_config.params.n_embed is 999, but the architecture needs 64"):
        load_janus(fresh_dir, cache_dir=False)


def test_unsupported_dtype_is_refused(fresh_dir):
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        load_janus(fresh_dir, dtype="int8", cache_dir=False)


def test_copy_of_checkpoint_elsewhere_converts_again(tmp_path, fresh_dir):
    cache = tmp_path / "cache"
    load_janus(fresh_dir, cache_dir=cache)
    moved = shutil.copytree(fresh_dir, tmp_path / "moved")
    _, report = load_janus(moved, cache_dir=cache)
    assert report.source == "converted"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_dtypes_load_as_that_dtype(tmp_path, dtype):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", dtype="bfloat16")
    model, report = load_janus(directory, dtype=dtype, cache_dir=False)
    assert report.dtype == dtype
    assert {str(p.dtype) for p in model.parameters()} == {f"paddle.{dtype}"}
    reference_model, _ = load_janus(directory, cache_dir=False)
    name, param = "gen_head.vision_head.weight", dict(model.named_parameters())["gen_head.vision_head.weight"]
    widened = param.astype("float32").numpy()
    exact = dict(reference_model.named_parameters())[name].numpy()
    if dtype == "bfloat16":  # bf16 storage -> bf16 parameters: bit for bit
        np.testing.assert_array_equal(widened, exact)
    else:
        np.testing.assert_allclose(widened, exact, rtol=1e-3, atol=1e-6)


def _stored_dtypes(cache: Path) -> tuple[set[str], int]:
    (cached,) = cache.rglob("weights.safetensors")
    header, _ = safetensors_io.read_header(cached)
    return {info["dtype"] for info in header.values()}, cached.stat().st_size


def test_converted_cache_of_a_bf16_checkpoint_keeps_bf16_at_half_the_float32_size(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", dtype="bfloat16")
    kept, first = load_janus(directory, cache_dir=tmp_path / "kept", keep_bf16=True)
    again, second = load_janus(directory, cache_dir=tmp_path / "kept", keep_bf16=True)
    widened, _ = load_janus(directory, cache_dir=tmp_path / "widened")
    assert (first.source, second.source) == ("converted", "cache")
    assert first.weights == second.weights == "bfloat16"
    kept_dtypes, kept_size = _stored_dtypes(tmp_path / "kept")
    widened_dtypes, widened_size = _stored_dtypes(tmp_path / "widened")
    assert (kept_dtypes, widened_dtypes) == ({"BF16"}, {"F32"})
    assert 0.45 < kept_size / widened_size < 0.55
    storable = keys.bf16_storable_names(again)
    exact = _weights(widened)
    for name, param in again.named_parameters():  # from the cache: bf16 where computed from bf16, values exact
        assert str(param.dtype) == ("paddle.bfloat16" if name in storable else "paddle.float32"), name
        np.testing.assert_array_equal(param.astype("float32").numpy(), exact[name], err_msg=name)


def test_float32_checkpoint_stays_float32_when_bf16_weights_are_allowed(tmp_path, fresh_dir):
    model, report = load_janus(fresh_dir, cache_dir=tmp_path / "cache", keep_bf16=True)
    assert report.weights == "float32"
    assert {str(p.dtype) for p in model.parameters()} == {"paddle.float32"}
    assert _stored_dtypes(tmp_path / "cache")[0] == {"F32"}
    _assert_same(model, _expected_weights(model))


def test_failed_conversion_leaves_no_cache_file_behind(tmp_path, fresh_dir):
    _rewrite(fresh_dir, lambda t: t.pop("gen_head.vision_head.bias"))
    with pytest.raises(CheckpointError, match="missing key"):
        load_janus(fresh_dir, cache_dir=tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_torch_checkpoint_naming_anything_but_tensors_is_refused(fresh_dir):
    import pickle
    import zipfile

    (fresh_dir / "model.safetensors").unlink()
    with zipfile.ZipFile(fresh_dir / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": os.getcwd}))  # a callable, not a tensor
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot read torch checkpoint .*may not contain"):
        load_janus(fresh_dir, cache_dir=False)
