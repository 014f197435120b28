"""JANUS_DTYPE=auto on cards this machine does not have: their properties simulated, the choice and its reason in
the settings, the log, /info and the self-test report."""

from __future__ import annotations

import logging

import pytest

from service.device import DeviceProperties, choose_dtype, parse_bytes
from service.selftest import Report
from service.settings import Settings

GiB = 2**30
V100 = DeviceProperties("Tesla V100-SXM2-16GB", (7, 0), 16 * GiB)
T4 = DeviceProperties("Tesla T4", (7, 5), 15 * GiB)
A100 = DeviceProperties("NVIDIA A100-SXM4-80GB", (8, 0), 80 * GiB)
H100 = DeviceProperties("NVIDIA H100 80GB HBM3", (9, 0), 80 * GiB)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("JANUS_") and n != "JANUS_CACHE_DIR"]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("card", "dtype"), [(V100, "float16"), (T4, "float16"), (A100, "bfloat16"),
                                             (H100, "bfloat16")])
def test_auto_picks_bfloat16_from_compute_capability_8_and_float16_below(card, dtype):
    choice = Settings(device="gpu").dtype_choice(card)
    assert choice.dtype == dtype
    assert card.name in choice.reason and f"compute capability {card.capability_text}" in choice.reason
    assert choice.reason.startswith(f"auto on {card.name}")


def test_the_reason_below_8_says_why_bfloat16_was_not_taken():
    assert "bfloat16 needs compute capability 8.0" in choose_dtype("auto", "gpu", V100).reason


def test_an_explicit_dtype_is_kept_and_bfloat16_on_a_v100_is_warned_about():
    assert choose_dtype("float32", "gpu", A100).dtype == "float32"
    assert choose_dtype("float16", "gpu", H100).dtype == "float16"
    forced = choose_dtype("bfloat16", "gpu", V100)
    assert forced.dtype == "bfloat16" and "no bf16 matrix units" in forced.reason and "float16" in forced.reason
    assert "no bf16" not in choose_dtype("bfloat16", "gpu", A100).reason


def test_on_the_cpu_auto_is_float32_and_needs_no_card():
    choice = Settings().dtype_choice()
    assert choice.dtype == "float32" and "cpu" in choice.reason
    with pytest.raises(ValueError, match="properties are needed"):
        Settings(device="gpu").dtype_choice(None)


def test_the_kv_pool_comes_from_the_card_on_the_gpu_unless_its_size_is_set(monkeypatch):
    assert Settings(device="gpu").kv_cache_from_card
    assert not Settings(device="gpu", kv_cache_mb=8192).kv_cache_from_card  # the default's value, but given
    assert not Settings().kv_cache_from_card
    monkeypatch.setenv("JANUS_KV_CACHE_MB", "4096")
    assert not Settings(device="gpu").kv_cache_from_card
    assert Settings(device="gpu").gpu_memory_fraction == 0.9


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_a_memory_fraction_outside_0_to_1_is_refused(monkeypatch, fraction):
    from pydantic import ValidationError

    monkeypatch.setenv("JANUS_GPU_MEMORY_FRACTION", fraction)
    with pytest.raises(ValidationError, match="gpu_memory_fraction"):
        Settings()


@pytest.mark.parametrize(("text", "size"), [("16GiB", 16 * GiB), ("16 GB", 16 * GiB), ("24g", 24 * GiB),
                                            ("81920MiB", 80 * GiB), ("1.5GiB", 3 * GiB // 2), ("4096", 4096)])
def test_memory_sizes_are_read_in_binary_units(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "16XB", "-1GiB", "", "0"])
def test_a_memory_size_that_is_not_one_says_how_to_write_it(text):
    with pytest.raises(ValueError, match="write e.g. 16GiB"):
        parse_bytes(text)


def test_the_server_logs_and_reports_the_choice_and_its_reason(tiny_dir, caplog):
    from tests.service.helpers import start_server, test_settings

    with caplog.at_level(logging.INFO, logger="service.runtime"):
        live = start_server(test_settings(tiny_dir, dtype="auto"))
    try:
        with live.client() as http:
            info = http.get("/info").json()
    finally:
        live.stop()
    assert info["dtype"] == "float32" and info["dtype_reason"] == Settings().dtype_choice().reason
    assert f"dtype float32: {info['dtype_reason']}" in caplog.text


def test_the_self_test_report_gives_the_choice_and_the_setup():
    report = Report("gpu", "float16", "float16", [], {}, dtype_reason=choose_dtype("auto", "gpu", V100).reason,
                    setup={"kv pool": "9.1 GiB"})
    text = report.describe()
    assert "dtype: auto on Tesla V100-SXM2-16GB (compute capability 7.0): float16" in text
    assert "kv pool: 9.1 GiB" in text
    assert report.to_json()["dtype_reason"].startswith("auto on Tesla V100") and report.to_json()["setup"]
