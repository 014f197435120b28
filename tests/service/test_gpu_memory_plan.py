"""The memory planner (`janus-serve plan`, service/memory_plan.py) against what the network and the CPU path
actually allocate for the same model and settings, and the pool arithmetic on simulated 16, 24 and 80 GB cards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.config import JanusConfig, published_config
from model.tiny_checkpoint import preset_config
from service.memory_plan import (
    INT8_GROUP,
    MiB,
    kv_position_bytes,
    parameter_count,
    plan,
    pool_blocks,
    pool_from_card,
    table_bytes,
    weight_bytes,
)

GiB = 2**30
ROOT = Path(__file__).resolve().parents[2]
SIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


def _lazy(cfg: JanusConfig, dtype: str = "float32"):
    from model.checkpoint.loader import build_lazy

    return build_lazy(cfg, dtype)


def _tensor_bytes(tensors) -> int:
    return sum(int(np.prod(t.shape)) * SIZES[str(t.dtype).replace("paddle.", "")] for t in tensors)


@pytest.mark.parametrize("config", [lambda: published_config("1B"), lambda: published_config("7B"),
                                    lambda: preset_config("tiny"), lambda: preset_config("demo"),
                                    lambda: preset_config("mid")], ids=["1B", "7B", "tiny", "demo", "mid"])
def test_the_parameter_count_from_config_json_is_the_networks(config):
    cfg = config()
    assert parameter_count(cfg) == sum(int(np.prod(p.shape)) for p in _lazy(cfg).parameters())


def _tables(model) -> list:
    """The rotary tables a loaded network holds: the buffers of PaddleNLP's layers (one table they share) and the
    project's own."""
    rotary = model.backbone.rotary
    return [b for _, b in model.named_buffers()] + [rotary.half_cos, rotary.half_sin, rotary.cos, rotary.signed_sin]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_and_tables_are_what_the_cpu_path_allocates_for_the_tiny_checkpoint(tmp_path, dtype):
    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import build_tiny_checkpoint

    directory = build_tiny_checkpoint(tmp_path / dtype, dtype=dtype)
    model, _ = load_janus(directory, dtype, cache_dir=False)
    cfg = JanusConfig.from_file(directory / "config.json")
    assert {str(p.dtype) for p in model.parameters()} == {f"paddle.{dtype}"}
    assert weight_bytes(cfg, dtype) == _tensor_bytes(model.parameters())
    assert table_bytes(cfg) == _tensor_bytes(_tables(model))


def test_int8_weights_are_what_the_cpu_loader_allocates_for_them(tmp_path):
    """The planner's int8 arithmetic against the int8 weights and scales the CPU path actually holds."""
    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import build_tiny_checkpoint

    directory = build_tiny_checkpoint(tmp_path / "int8")
    model, _ = load_janus(directory, "float32", cache_dir=False, quantization="int8")
    held = _tensor_bytes(list(model.parameters()) + [b for _, b in model.named_buffers()])
    cfg = JanusConfig.from_file(directory / "config.json")
    rotary = model.backbone.rotary
    paddlenlp_tables = table_bytes(cfg) - _tensor_bytes([rotary.half_cos, rotary.half_sin, rotary.cos,
                                                         rotary.signed_sin])
    assert weight_bytes(cfg, "float32", "int8") == held - paddlenlp_tables


def test_the_1b_networks_rotary_tables_are_counted():
    cfg = published_config("1B")
    model = _lazy(cfg, "bfloat16")
    assert table_bytes(cfg) == _tensor_bytes(_tables(model))
    assert table_bytes(cfg) // MiB == 40  # [16384, 128] cos and sin in float32 shared by the 24 layers, the project's


def test_weights_are_the_1b_benchmark_checkpoints_bf16_tensors_the_loader_keeps():
    from bench.big_checkpoint import published_shapes
    from model.tiny_checkpoint import vq_encoder_shapes

    config, shapes = published_shapes("1B")
    cfg = JanusConfig.from_dict(config)
    skipped = vq_encoder_shapes(cfg.gen_vision)  # written like the published files; only the decoder is loaded
    stored = sum(int(np.prod(shape)) * 2 for name, shape in shapes.items() if name not in skipped)
    assert weight_bytes(cfg, "bfloat16") == stored
    assert abs(weight_bytes(cfg, "bfloat16") / GiB - 3.81) < 0.01  # Janus-Pro-1B: 2.05 B parameters


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_1b_kv_pool_is_what_its_cache_allocates(dtype):
    cfg = published_config("1B")
    cache = _lazy(cfg, dtype).new_cache(24, 16)
    planned = plan(cfg, 16 * GiB, dtype, max_seq_len=4096, kv_cache_mb=24 * 16 * kv_position_bytes(cfg, dtype) // MiB)
    assert planned.contents.blocks == 24
    assert _tensor_bytes(cache.keys + cache.values) == planned.pool


def test_the_kv_pool_is_what_the_engine_allocates_for_the_same_settings(tiny_model):
    from service.engine import Engine, EngineConfig

    cfg = tiny_model.cfg
    engine = Engine(tiny_model, EngineConfig(max_rows=4, max_seq_len=128, kv_cache_mb=1, block_size=16))
    planned = plan(cfg, 16 * GiB, "float32", max_rows=4, max_seq_len=128, block_size=16, kv_cache_mb=1)
    assert engine.blocks.num_blocks == planned.contents.blocks
    engine.start()
    engine.warmup()
    try:
        allocated = _tensor_bytes(engine.runner.cache.keys + engine.runner.cache.values)
    finally:
        engine.shutdown(0)
    assert allocated == planned.pool == planned.contents.blocks * 16 * kv_position_bytes(cfg, "float32")


def _odd_widths() -> JanusConfig:
    """The tiny network with an MLP width that is no multiple of 64: its last group of input columns is partial."""
    cfg = preset_config("tiny")
    cfg.language.intermediate_size = 100
    return cfg


@pytest.mark.parametrize("config", [lambda: published_config("1B"), _odd_widths], ids=["1B", "odd-widths"])
def test_int8_counts_a_byte_per_weight_and_a_float32_scale_per_64_columns_of_the_lm_linears_and_gen_head(config):
    cfg = config()
    model = _lazy(cfg, "bfloat16")
    expected = 0
    for name, p in model.named_parameters():
        shape = list(p.shape)
        quantized = name.endswith(".weight") and len(shape) == 2 and (
            name.startswith("language_model.") and "embed_tokens" not in name or name.startswith("gen_head."))
        if quantized:  # Paddle's Linear weight is [in, out]
            expected += shape[0] * shape[1] + -(-shape[0] // INT8_GROUP) * shape[1] * 4
        else:
            expected += int(np.prod(shape)) * 2
    assert weight_bytes(cfg, "bfloat16", "int8") == expected
    if cfg.language.hidden_size == 2048:  # Janus-Pro-1B: the quantized linears are most of it
        assert weight_bytes(cfg, "bfloat16", "int8") < 0.7 * weight_bytes(cfg, "bfloat16")


@pytest.mark.parametrize(("card_gib", "in_use_gib", "pool_gib"), [(16, 8.0, 6.4), (24, 8.0, 13.6), (80, 20.0, 52.0),
                                                                  (16, 15.0, 0.0)])
def test_the_pool_takes_what_is_left_of_the_fraction_after_the_warm_up(card_gib, in_use_gib, pool_gib):
    assert pool_from_card(card_gib * GiB, 0.9, int(in_use_gib * GiB)) == pytest.approx(pool_gib * GiB, abs=1)


def test_a_fraction_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        pool_from_card(16 * GiB, 1.2, 0)


def test_the_pool_never_holds_more_blocks_than_max_rows_rows_of_max_seq_len_need():
    block = kv_position_bytes(published_config("1B"), "bfloat16") * 16
    assert pool_blocks(60 * GiB, block, 16, max_rows=4, max_seq_len=1000) == 4 * 63
    assert pool_blocks(1 * GiB, block, 16, max_rows=32, max_seq_len=16384) == GiB // block


@pytest.mark.parametrize("card_gib", [16, 24, 80])
def test_bigger_cards_hold_more_and_every_plan_stays_within_its_share(card_gib):
    cfg = published_config("1B")
    small = plan(cfg, 16 * GiB, "float16", max_seq_len=4096)
    result = plan(cfg, card_gib * GiB, "float16", max_seq_len=4096)
    assert result.fits and result.in_use + result.pool <= 0.9 * card_gib * GiB
    assert result.contents.blocks >= small.contents.blocks
    assert result.contents.positions == result.contents.blocks * 16
    if result.contents.blocks < 32 * 4096 // 16:  # not at the ceiling: the pool is what is left, to a block
        assert 0.9 * card_gib * GiB - (result.in_use + result.pool) < result.block_bytes


def test_a_pool_capped_by_max_rows_says_so():
    capped = plan(published_config("1B"), 80 * GiB, "bfloat16", max_seq_len=1024)
    assert capped.contents.blocks == 32 * 1024 // 16 and capped.pool_source.endswith(
        "capped at what 32 rows of 1024 positions use")
    assert "capped" not in plan(published_config("1B"), 16 * GiB, "bfloat16", max_seq_len=4096).pool_source


def test_an_explicit_kv_cache_mb_overrides_the_card():
    result = plan(published_config("1B"), 80 * GiB, "bfloat16", max_seq_len=4096, kv_cache_mb=1024)
    assert result.pool == 1024 * MiB // result.block_bytes * result.block_bytes
    assert result.pool_source == "JANUS_KV_CACHE_MB=1024"


def test_a_pool_that_holds_one_image_prompt_but_not_two_says_so():
    cfg = published_config("1B")
    block = kv_position_bytes(cfg, "float16") * 16
    one_image = 80 + 578 + 16  # the question, one image, the answer room
    tight = plan(cfg, 80 * GiB, "float16", max_seq_len=4096, kv_cache_mb=-(-(-(-one_image // 16) * block) // MiB))
    assert tight.contents.images_per_question == 1 and tight.contents.parallel_size <= 1


def test_the_planners_block_count_is_the_block_managers():
    from service.engine.block_manager import worst_case_blocks as engines
    from service.memory_plan import worst_case_blocks

    for case in [(16, 1, 1, 16), (16, 17, 3, 600), (16, 32, 16, 608), (8, 700, 1, 716), (16, 15, 32, 591)]:
        assert worst_case_blocks(*case) == engines(*case)


def test_the_plan_command_does_not_import_paddle(config_1b):
    code = ("import sys; from service import plan_cli; plan_cli.main(['--model-dir', sys.argv[1], "
            "'--device-memory', '16GiB', '--compute-capability', '7.0']); print('paddle' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(config_1b)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip().endswith("False"), done.stdout + done.stderr


def _plan_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def config_1b(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("janus-pro-1b-config")
    cfg = published_config("1B")
    cfg.name = "Janus-Pro-1B"
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    return folder


def test_the_plan_command_reads_config_json_only_and_prints_the_v100_figures(config_1b):
    done = _plan_command("--model-dir", str(config_1b), "--device-memory", "16GiB", "--compute-capability", "7.0",
                         "--max-seq-len", "4096")
    assert done.returncode == 0, done.stderr
    expected = plan(published_config("1B"), 16 * GiB, "float16", max_seq_len=4096)
    assert "float16 (auto)" in done.stdout and "Janus-Pro-1B (2.05 B parameters)" in done.stdout
    assert f"weights        {expected.weights / GiB:6.2f} GiB" in done.stdout
    assert f"fits: {expected.contents.positions} positions" in done.stdout
    as_json = json.loads(_plan_command("--model-dir", str(config_1b), "--device-memory", "16GiB",
                                       "--compute-capability", "7.0", "--max-seq-len", "4096", "--json").stdout)
    assert (as_json["dtype"], as_json["weights_bytes"], as_json["kv_pool_bytes"]) == (
        "float16", expected.weights, expected.pool)


def test_the_plan_command_takes_the_servers_settings_from_the_environment(config_1b, monkeypatch):
    monkeypatch.setenv("JANUS_QUANTIZATION", "int8")
    monkeypatch.setenv("JANUS_MAX_SEQ_LEN", "2048")
    monkeypatch.setenv("JANUS_GPU_MEMORY_FRACTION", "0.8")
    as_json = json.loads(_plan_command("--model-dir", str(config_1b), "--device-memory", "24GiB",
                                       "--compute-capability", "8.9", "--json").stdout)
    expected = plan(published_config("1B"), 24 * GiB, "bfloat16", "int8", fraction=0.8, max_seq_len=2048)
    assert (as_json["quantization"], as_json["max_seq_len"], as_json["fraction"]) == ("int8", 2048, 0.8)
    assert (as_json["weights_bytes"], as_json["kv_pool_bytes"]) == (expected.weights, expected.pool)


def test_the_plan_command_says_what_to_change_when_it_does_not_fit(config_1b):
    done = _plan_command("--model-dir", str(config_1b), "--device-memory", "16GiB", "--compute-capability", "7.0")
    assert done.returncode == 1
    assert "does not fit" in done.stdout and "Lower --max-seq-len" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--device-memory", "lots"], "write e.g. 16GiB"),
    (["--device-memory", "16GiB", "--compute-capability", "seven"], "write MAJOR.MINOR"),
    (["--device-memory", "16GiB", "--compute-capability", "8.0", "--max-rows", "0"], "max_rows"),
])
def test_bad_plan_arguments_are_refused_with_what_to_write(config_1b, args, message):
    done = _plan_command("--model-dir", str(config_1b), *args)
    assert done.returncode == 2 and message in done.stderr


def test_a_folder_without_config_json_is_refused(tmp_path):
    done = _plan_command("--model-dir", str(tmp_path), "--device-memory", "16GiB")
    assert done.returncode == 2 and "config.json" in done.stderr


def test_without_a_gpu_the_card_must_be_named(config_1b):
    done = _plan_command("--model-dir", str(config_1b), "--compute-capability", "7.0")
    assert done.returncode == 2 and "--device-memory is needed without a gpu here" in done.stderr
