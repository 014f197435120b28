"""Settings from JANUS_* variables, `janus-serve` flags on top, and refusal of bad values before anything loads."""

from __future__ import annotations

import logging

import pytest

from service.cli import build_parser, load_settings, main
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("JANUS_") and n != "JANUS_CACHE_DIR"]:
        monkeypatch.delenv(name)


def test_defaults_are_safe_for_a_first_run():
    settings = Settings()
    assert settings.model_dir is None and settings.host == "127.0.0.1" and settings.api_key is None
    assert settings.compute_dtype == "float32"


def test_environment_variables_with_the_janus_prefix_configure_the_server(monkeypatch, tmp_path):
    monkeypatch.setenv("JANUS_MAX_ROWS", "7")
    monkeypatch.setenv("JANUS_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("JANUS_REQUEST_TIMEOUT_S", "12.5")
    monkeypatch.setenv("JANUS_API_KEY", "from-env")
    settings = Settings()
    assert (settings.max_rows, settings.model_dir, settings.request_timeout_s) == (7, tmp_path, 12.5)
    assert settings.api_key_value() == "from-env" and "from-env" not in repr(settings)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("JANUS_MAX_ROWS", "7")
    monkeypatch.setenv("JANUS_PORT", "9000")
    settings = load_settings(["--max-rows", "9", "--log-level", "debug"])
    assert (settings.max_rows, settings.port, settings.log_level) == (9, 9000, "debug")


def test_every_setting_has_a_flag():
    flags = {action.dest for action in build_parser()._actions if action.dest != "help"}
    assert flags == set(Settings.model_fields)


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--device", "tpu"], ["--dtype", "bfloat16"],
                                  ["--max-rows", "0"], ["--request-timeout-s", "0"], ["--model-dir", "/no/such/dir"],
                                  ["--max-rows", "lots"]])
def test_bad_values_stop_the_cli_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        load_settings(argv)
    assert stop.value.code == 2
    assert "janus-serve: error" in capsys.readouterr().err


def test_half_precision_is_allowed_on_gpu_and_auto_waits_for_the_card_there():
    assert Settings(device="gpu", dtype="float16").compute_dtype == "float16"
    with pytest.raises(ValueError, match="depends on the card"):
        Settings(device="gpu").compute_dtype  # noqa: B018 - the property raises


def test_auto_on_cpu_computes_in_float32_keeping_bf16_weights_and_float32_widens_them():
    assert (Settings().compute_dtype, Settings().keep_bf16_weights) == ("float32", True)
    assert (Settings(dtype="float32").compute_dtype, Settings(dtype="float32").keep_bf16_weights) == ("float32", False)
    assert Settings(device="gpu").keep_bf16_weights is False
    with pytest.raises(ValueError, match="use auto .bf16 checkpoints keep bf16 weights, computed in float32"):
        Settings(dtype="bfloat16")


def test_a_folder_without_a_checkpoint_exits_1_with_the_reason(tmp_path, caplog):
    with caplog.at_level(logging.CRITICAL, logger="service"):
        assert main(["--model-dir", str(tmp_path), "--port", "0"]) == 1
    assert "cannot load the model" in caplog.text and "config.json" in caplog.text
