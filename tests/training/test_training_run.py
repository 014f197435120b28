"""A short training run of the demo model (slow: a few minutes; outside the default suite, `pytest -m slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
                    "--check-pictures", "0", "--guidance-steps", "50"],
                   cwd=ROOT, env=env, check=True, timeout=1800)
    log = (out / "training_log.txt").read_text()
    assert len(_losses(log, "guidance", "guided")) == 2  # the guidance stage ran and logged its term
    for stage, name in (("decoder", "mse"), ("vision", "total"), ("model", "generation"), ("model", "understanding")):
        values = _losses(log, stage, name)
        assert len(values) == 4 and values[-1] < 0.7 * values[0], (stage, name, values)
    summary = json.loads((out / "training.json").read_text())
    assert summary["options"]["lm_steps"] == 100

    from model.checkpoint.loader import load_janus

    model, _ = load_janus(out, cache_dir=False)
    assert model.cfg.description.startswith("a small demo model trained on synthetic shapes")


@pytest.mark.slow
def test_the_guidance_stage_resumed_on_a_joint_stage_checkpoint_gives_the_whole_runs_weights(tmp_path: Path):
    """`--resume-guidance DIR` (the guidance stage alone, on a run stopped after the joint stage) writes what one
    run with the stage writes, weight for weight."""
    from safetensors.numpy import load_file

    env = {**os.environ, "JANUS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JANUS_CPU_KERNELS", None)
    short = ["--decoder-steps", "30", "--vision-steps", "30", "--lm-steps", "30", "--codebook-pictures", "600",
             "--generation-pool", "300", "--check-pictures", "0"]

    def train(out: str, *extra: str) -> None:
        subprocess.run([sys.executable, "-m", "training", "--out", str(tmp_path / out), *short, *extra], cwd=ROOT,
                       env=env, check=True, timeout=1800)

    train("whole", "--guidance-steps", "30")
    train("joint", "--guidance-steps", "0")
    train("resumed", "--guidance-steps", "30", "--resume-guidance", str(tmp_path / "joint"))
    whole, joint, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "joint", "resumed"))
    assert whole.keys() == resumed.keys()
    assert all(np.array_equal(whole[name], resumed[name]) for name in whole)
    moved = [name for name in whole if not np.array_equal(whole[name], joint[name])]
    assert any(name.startswith("language_model.") for name in moved)  # the stage trained something
    assert not any(name.startswith("gen_vision_model.") for name in moved)  # and left the VQ decoder alone
    log = (tmp_path / "whole" / "training_log.txt").read_text()
    guided = _losses(log, "guidance", "guided")
    assert len(guided) == 2 and np.isfinite(guided).all(), guided  # steps 25 and 30
