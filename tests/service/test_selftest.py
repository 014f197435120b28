"""`janus-serve self-test`: the command on the CPU against itself, its verdict on deliberately perturbed weights, and
the comparison rules on hand-made traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.selftest import TOLERANCES, RecordingRunner, Trace, compare, run_selftest

ROOT = Path(__file__).resolve().parents[2]


def _self_test_command(tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env["JANUS_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "service.cli", "self-test", "--json", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_self_test_command_passes_on_the_cpu_against_itself(tmp_path):
    report = _self_test_command(tmp_path, "--dtype", "float32")
    assert report["passed"] is True and (report["device"], report["dtype"], report["weights"]) == (
        "cpu", "float32", "float32")
    assert [c["request"] for c in report["comparisons"]] == ["understanding", "generation"]
    for comparison in report["comparisons"]:
        # the same kernels on the same machine: bit-identical, every step compared
        assert comparison["max_abs_diff"] == 0.0 and comparison["tokens_agree"] is True
        assert comparison["steps"] == 16
    for timing in report["timings"].values():
        assert timing["load_s"] > 0 and timing["step_ms"] > 0 and timing["prefill_ms"] > 0
    # nothing of the run is left behind but the cache's own folders
    assert not list((tmp_path / "cache").glob("selftest-*"))


def test_self_test_by_default_on_the_cpu_checks_bf16_weights_against_their_float32_widening(tmp_path):
    """JANUS_DTYPE=auto serves bf16 checkpoints with bf16 weights on the CPU: the self-test then runs a bf16-stored
    checkpoint through the bf16-weight kernels against the same weights widened to float32."""
    report = _self_test_command(tmp_path)
    assert report["passed"] is True and (report["device"], report["dtype"], report["weights"]) == (
        "cpu", "float32", "bfloat16")
    assert [c["request"] for c in report["comparisons"]] == ["understanding", "generation"]
    for comparison in report["comparisons"]:
        # float32 arithmetic on exactly the same values: accumulation order only
        assert comparison["relative_diff"] < 1e-5 and comparison["tokens_agree"] is True
        assert comparison["steps"] == 16
    assert set(report["timings"]) == {"cpu float32 (weights bfloat16)", "cpu float32 (reference)"}


def test_perturbed_bf16_weights_fail_the_self_test():
    report = run_selftest("cpu", "float32", perturb=0.05, keep_bf16=True)
    assert report.weights == "bfloat16" and not report.passed
    assert report.describe().startswith("janus-serve self-test: cpu float32 (weights bfloat16) against cpu float32")


def test_self_test_refuses_half_precision_on_the_cpu():
    done = subprocess.run([sys.executable, "-m", "service.cli", "self-test", "--dtype", "bfloat16"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not supported on cpu" in done.stderr


def test_perturbed_weights_fail_the_self_test():
    report = run_selftest("cpu", "float32", perturb=0.05)
    assert not report.passed
    assert all(c.relative_diff > TOLERANCES["float32"] for c in report.comparisons)
    assert report.describe().endswith("FAIL")


def test_perturbation_within_the_tolerance_passes_with_a_nonzero_difference():
    report = run_selftest("cpu", "float32", perturb=1e-5)
    assert report.passed, report.describe()
    assert all(0 < c.relative_diff < TOLERANCES["float32"] for c in report.comparisons)


# the comparison rules


def _trace(rows: list[list[float]]) -> Trace:
    """One choice per step, logits as given."""
    trace = Trace()
    for row in rows:
        logits = np.asarray([row], np.float32)
        trace.logits.append(logits)
        trace.decisions.append(logits)
        trace.tokens.append([int(np.argmax(row))])
    return trace


def test_identical_traces_agree_with_zero_difference():
    ref = _trace([[0, 5, 1], [3, 0, 1], [0, 0, 9]])
    result = compare("x", ref, _trace([[0, 5, 1], [3, 0, 1], [0, 0, 9]]), 1e-3)
    assert result.passed and result.max_abs_diff == 0 and result.steps == 3 and result.tokens_agree


def test_difference_is_relative_to_the_largest_reference_logit():
    ref = _trace([[0, 10, 1], [3, 0, 1]])
    test = _trace([[0, 10.05, 1], [3, 0, 1]])
    result = compare("x", ref, test, 1e-3)
    assert result.max_abs_diff == pytest.approx(0.05, rel=1e-4)
    assert result.relative_diff == pytest.approx(0.005, rel=1e-4)
    assert not result.passed and result.tokens_agree
    assert compare("x", ref, test, 1e-2).passed


def test_a_token_disagreement_beyond_a_near_tie_fails_through_its_logit_difference():
    ref = _trace([[0, 5, 1], [4, 0, 1]])
    test = _trace([[0, 5, 1], [3.5, 0, 4.0]])  # step 1 picks token 2 although the reference's margin is 3
    result = compare("x", ref, test, 0.05)
    assert not result.tokens_agree and result.first_disagreement == 1
    assert result.max_abs_diff == pytest.approx(3.0) and not result.passed


def test_a_disagreement_at_a_near_tie_is_accepted_and_later_steps_are_not_compared():
    ref = _trace([[0, 5, 1], [2.001, 2.0, 0], [9, 0, 0]])
    test = _trace([[0, 5, 1], [2.0, 2.002, 0], [0, 0, 50]])  # the runs part at a tie; step 2 then differs wildly
    result = compare("x", ref, test, 1e-3)
    assert result.first_disagreement == 1 and result.near_tie and result.steps == 2
    assert result.passed


def test_a_run_that_stops_early_counts_as_a_disagreement():
    ref = _trace([[0, 5, 1], [3, 0, 1], [0, 0, 9]])
    result = compare("x", ref, _trace([[0, 5, 1], [3, 0, 1]]), 1e-3)
    assert not result.tokens_agree and result.first_disagreement == 2 and not result.passed


def test_the_recorder_keeps_steps_the_engine_ran_before_the_request_was_labelled():
    """The engine thread may run a request's first step before `engine.submit`'s caller writes its label: that
    step belongs to the trace all the same (it was dropped, and the self-test failed now and then under load)."""
    from types import SimpleNamespace

    class Request:  # hashable, as the engine's requests are: the runner's logits are keyed by them
        id, params = "req-1", SimpleNamespace(guided=False)

    request = Request()
    plans = iter([SimpleNamespace(prefill=True), SimpleNamespace(prefill=False)])
    steps = iter([np.array([0.0, 2.0, 1.0]), np.array([3.0, 1.0, 0.0])])
    runner = SimpleNamespace(forward=lambda plan, failed: {request: next(steps)},
                             sample=lambda plan, logits, failed: "sampled")
    labels: dict[str, str] = {}
    recorder = RecordingRunner(runner, labels)
    assert recorder.run(next(plans)) == "sampled"  # the prefill, before the label exists
    labels["req-1"] = "understanding"
    recorder.run(next(plans))
    assert recorder.traces["understanding"].tokens == [[1], [0]]
