"""The KV pool sized from the card (service/gpu_pool.py): the warm-up at the largest batch runs on the real tiny
model here, the card is simulated (16, 24, 80 GiB); and /info's report of the pool on a real server."""

from __future__ import annotations

import pytest

from service.engine.config import kv_block_bytes
from service.gpu_pool import PoolTooSmall, size_pool
from tests.service.helpers import start_server, test_settings

GiB = 2**30
MiB = 2**20


class SimulatedCard:
    """A card of `total_bytes` whose allocator peaked at the weights plus the probe cache plus `activations` during
    the warm-up (what Paddle's max_memory_allocated would say), and that records the calls the sizing makes."""

    def __init__(self, total_bytes: int, weights: int, activations: int, probe: int) -> None:
        self.total_bytes = total_bytes
        self.peak = weights + probe + activations
        self.calls: list[str] = []

    def reset_peak(self) -> None:
        self.calls.append("reset_peak")

    def peak_bytes(self) -> int:
        self.calls.append("peak_bytes")
        return self.peak

    def release(self) -> None:
        self.calls.append("release")


@pytest.fixture
def extend_calls(tiny_model, monkeypatch):
    """The shapes of every backbone forward the warm-up runs (the real forward still runs)."""
    calls: list[tuple[int, int, int]] = []
    real = type(tiny_model).extend

    def recording(self, embeds, cache, rows, last_only=False):
        calls.append((embeds.shape[0], embeds.shape[1], int(rows.lengths(embeds.shape[1]).max())))
        return real(self, embeds, cache, rows, last_only)

    monkeypatch.setattr(type(tiny_model), "extend", recording)
    return calls


@pytest.mark.parametrize("card_gib", [16, 24, 80])
def test_the_pool_takes_what_the_card_has_left_after_the_warm_up_at_the_largest_batch(tiny_model, extend_calls,
                                                                                      card_gib):
    block = kv_block_bytes(tiny_model, 16)
    max_rows, max_seq_len = 6, 256
    probe = -(-max_seq_len // 16) * block
    weights, activations = 3 * GiB, 5 * GiB // 2
    card = SimulatedCard(card_gib * GiB, weights, activations, probe)
    sizing = size_pool(tiny_model, card, fraction=0.9, block_bytes=block, block_size=16, max_rows=max_rows,
                       max_seq_len=max_seq_len)
    # the warm-up: one prompt of max_seq_len - 1 positions, then max_rows rows decoding at max_seq_len positions
    assert extend_calls == [(1, max_seq_len - 1, max_seq_len - 1), (max_rows, 1, max_seq_len)]
    assert (sizing.warm_up.decode_rows, sizing.warm_up.decode_context) == (max_rows, max_seq_len)
    assert card.calls[:2] == ["release", "reset_peak"] and card.calls[-2:] == ["peak_bytes", "release"]
    assert sizing.in_use_bytes == weights + activations
    left = int(0.9 * card_gib * GiB) - weights - activations
    assert sizing.blocks == min(left // block, max_rows * max_seq_len // 16)
    assert f"{card_gib:.1f} GiB" in sizing.source and "warm-up at 6 rows and 256 positions" in sizing.source
    assert sizing.source.endswith("capped at what 6 rows of 256 positions use")  # the tiny model's rows are small


def test_below_the_row_ceiling_the_pool_is_what_is_left_to_a_block(tiny_model):
    block = kv_block_bytes(tiny_model, 16)
    probe = -(-64 // 16) * block
    share = int(0.9 * 2 * GiB)
    activations = 64 * MiB
    weights = share - activations - 6 * block - block // 3  # leaves six blocks and a third
    card = SimulatedCard(2 * GiB, weights, activations, probe)
    sizing = size_pool(tiny_model, card, fraction=0.9, block_bytes=block, block_size=16, max_rows=2,
                       max_seq_len=64)
    assert sizing.blocks == 6 < 2 * 64 // 16 and "capped" not in sizing.source


def test_a_card_too_small_for_one_request_stops_the_start_with_what_to_change(tiny_model):
    block = kv_block_bytes(tiny_model, 16)
    card = SimulatedCard(16 * GiB, 14 * GiB, GiB, 4 * block)
    with pytest.raises(PoolTooSmall, match="less than one request of max_seq_len 64") as refused:
        size_pool(tiny_model, card, fraction=0.9, block_bytes=block, block_size=16, max_rows=2, max_seq_len=64)
    assert "lower JANUS_MAX_SEQ_LEN" in str(refused.value) and "janus-serve plan" in str(refused.value)


@pytest.mark.parametrize("error", [MemoryError, RuntimeError])  # Paddle's is a MemoryError; other paths' a RuntimeError
def test_running_out_of_memory_in_the_warm_up_says_what_to_change(tiny_model, monkeypatch, error):
    def out_of_memory(*args, **kwargs):
        raise error("ResourceExhaustedError: Out of memory error on GPU 0, 15.78 GiB already allocated")

    monkeypatch.setattr(type(tiny_model), "extend", out_of_memory)
    card = SimulatedCard(16 * GiB, GiB, GiB, 0)
    with pytest.raises(PoolTooSmall, match="ran out of memory") as refused:
        size_pool(tiny_model, card, fraction=0.9, block_bytes=1024, block_size=16, max_rows=2, max_seq_len=64)
    assert "JANUS_GPU_MEMORY_FRACTION (now 0.9)" in str(refused.value)


def test_other_warm_up_failures_are_not_taken_for_a_full_card(tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a shape mismatch")

    monkeypatch.setattr(type(tiny_model), "extend", broken)
    with pytest.raises(RuntimeError, match="a shape mismatch"):
        size_pool(tiny_model, SimulatedCard(16 * GiB, GiB, GiB, 0), fraction=0.9, block_bytes=1024, block_size=16,
                  max_rows=2, max_seq_len=64)


def test_info_reports_the_pool_and_what_it_holds(tiny_dir):
    live = start_server(test_settings(tiny_dir, kv_cache_mb=1, max_rows=32))
    try:
        engine = live.runtime.engine
        with live.client() as http:
            info = http.get("/info").json()
            kv = info["kv_cache"]
            assert kv["blocks"] == engine.blocks.num_blocks and kv["block_size"] == 16
            assert kv["positions"] == kv["blocks"] * 16
            assert kv["mib"] == pytest.approx(kv["blocks"] * engine.block_bytes / MiB, abs=0.05) and kv["mib"] <= 1
            assert kv["source"].startswith("JANUS_KV_CACHE_MB=1,")
            assert kv["images_per_question"] == info["limits"]["max_images"]
            rows = kv["generation_rows"]
            assert 2 <= rows < 32 and rows % 2 == 0, kv  # 1 MiB holds fewer rows than max_rows
            # the rows it promises (for the short prompt it assumes) are rows a request gets; one more pair is
            # refused for the KV memory
            prompt = "a red fox in the snow"
            ok = http.post("/generate", json={"prompt": prompt, "parallel_size": rows // 2, "seed": 1})
            assert ok.status_code == 200, ok.text
            refused = http.post("/generate", json={"prompt": prompt, "parallel_size": rows // 2 + 1})
            assert refused.status_code == 422, refused.text
            assert "JANUS_KV_CACHE_MB" in refused.json()["error"]["message"]
    finally:
        live.stop()


def test_the_self_test_sizes_its_pool_from_the_card_and_reports_it_with_the_kernels():
    from model.tiny_checkpoint import preset_config
    from service.memory_plan import kv_position_bytes
    from service.selftest import run_selftest

    block = kv_position_bytes(preset_config("tiny"), "float32") * 16
    # a card whose share leaves room for 40 blocks beside the weights and the warm-up's peak
    weights, activations = GiB, 512 * MiB
    card = SimulatedCard(2 * GiB, weights, activations, probe=256 // 16 * block)
    fraction = (weights + activations + 40 * block + block // 2) / (2 * GiB)
    report = run_selftest("cpu", "float32", card=card, fraction=fraction)
    assert report.passed, report.describe()
    assert report.setup["kv pool"].startswith("from the card: 40 blocks")
    assert "warm-up at 8 rows and 256 positions" in report.setup["kv pool"]
    assert "kernels" in report.setup and report.to_json()["setup"] == report.setup
    text = report.describe()
    assert "  kv pool: from the card: 40 blocks" in text and "  kernels: " in text
