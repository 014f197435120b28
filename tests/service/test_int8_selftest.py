"""`janus-serve self-test --quantization int8`: int8 weights against the same device and dtype unquantized, run on
the CPU (the GPU's weight-only path is checked by the same command on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.selftest import INT8_TOLERANCE, TOLERANCES, run_selftest

ROOT = Path(__file__).resolve().parents[2]


def test_self_test_command_compares_int8_weights_with_the_unquantized_ones(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env["JANUS_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "service.cli", "self-test", "--quantization", "int8", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"] is True and report["quantization"] == "int8"
    assert report["weights"] == "int8 (bfloat16 elsewhere)"
    assert set(report["timings"]) == {"cpu float32 (weights int8 (bfloat16 elsewhere))",
                                      "cpu float32 (weights bfloat16) (reference)"}
    for comparison in report["comparisons"]:
        # the quantization's own error: nonzero (the run really held int8), within what the check allows
        assert 0 < comparison["relative_diff"] <= comparison["tolerance"] == TOLERANCES["float32"] + INT8_TOLERANCE
        assert comparison["steps"] == 16


def test_perturbed_int8_run_fails_the_self_test():
    """Weights 20% off (every weight but the int8 ones, whose scales carry their values) fail the check."""
    report = run_selftest("cpu", "float32", perturb=0.2, keep_bf16=True, quantization="int8")
    assert report.quantization == "int8" and not report.passed
    assert "with unquantized weights" in report.describe()
