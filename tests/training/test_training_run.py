"""A short training run of the demo model (slow: a few minutes; outside the default suite, `pytest -m slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _losses(log: str, stage: str, name: str) -> list[float]:
    values = []
    for line in log.splitlines():
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        if line.startswith(stage + " "):
            values.append(float(fields[name]))
    return values


@pytest.mark.slow
def test_short_training_lowers_every_loss_and_writes_a_servable_checkpoint(tmp_path: Path):
    env = {**os.environ, "JANUS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JANUS_CPU_KERNELS", None)  # the trainer switches the kernels off itself
    out = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "training", "--out", str(out), "--decoder-steps", "100", "--vision-steps",
                    "100", "--lm-steps", "100", "--codebook-pictures", "600", "--generation-pool", "600",
                    "--check-pictures", "0"],
                   cwd=ROOT, env=env, check=True, timeout=1800)
    log = (out / "training_log.txt").read_text()
    for stage, name in (("decoder", "mse"), ("vision", "total"), ("model", "generation"), ("model", "understanding")):
        values = _losses(log, stage, name)
        assert len(values) == 4 and values[-1] < 0.7 * values[0], (stage, name, values)
    summary = json.loads((out / "training.json").read_text())
    assert summary["options"]["lm_steps"] == 100

    from model.checkpoint.loader import load_janus

    model, _ = load_janus(out, cache_dir=False)
    assert model.cfg.description.startswith("a small demo model trained on synthetic shapes")
