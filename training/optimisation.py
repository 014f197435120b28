"""What every training stage shares: initial weights, the optimiser with its schedule, and a progress line."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import paddle
from paddle import nn

INIT_STD = 0.02


def init_transformer_weights(layer: nn.Layer, rng: np.random.Generator, residual_layers: int) -> None:
    """GPT-2's initialisation, from the seeded generator: projections and embeddings N(0, 0.02), the projections
    that write into the residual stream scaled down by sqrt(2 x layers), biases 0, norm scales 1; the vision
    encoder's position embeddings start as a 2-D sine-cosine table (as MAE's), so that where a patch lies is clear
    from the first step, not something small random vectors must first grow into. Convolutions (the VQ decoder)
    keep their own initialisation."""
    for name, param in layer.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if ".gen_vision_model." in f".{name}":
            continue
        if leaf == "pos_embed":  # [1, patches, width]
            value = grid_position_table(int(round(math.sqrt(param.shape[1]))), param.shape[2])[None]
        elif len(param.shape) == 1:
            value = np.zeros(param.shape) if leaf == "bias" else np.ones(param.shape)
        else:
            std = INIT_STD
            if name.endswith(("o_proj.weight", "down_proj.weight", "attn.proj.weight", "mlp.fc2.weight")):
                std /= math.sqrt(2 * residual_layers)
            value = rng.normal(0.0, std, param.shape)
        param.set_value(value.astype(np.float32))


def grid_position_table(grid: int, width: int) -> np.ndarray:
    """[grid * grid, width]: half the channels sines and cosines of the row at geometric frequencies, half of the
    column; rows of patches in reading order."""
    quarter = width // 4
    frequencies = 1.0 / (100.0 ** (np.arange(quarter) / max(1, quarter)))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows.reshape(-1), cols.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None]
        parts += [np.sin(angles), np.cos(angles)]
    table = np.concatenate(parts, axis=1)
    return np.pad(table, ((0, 0), (0, width - table.shape[1]))).astype(np.float32)


def seed_convolutions(layer: nn.Layer, rng: np.random.Generator) -> None:
    """He-uniform convolution weights and zero biases from the seeded generator (Paddle's own initialisers draw
    from its global generator, whose stream depends on everything created before)."""
    for name, param in layer.named_parameters():
        if len(param.shape) == 4:
            fan_in = int(np.prod(param.shape[1:]))
            bound = math.sqrt(6.0 / fan_in)
            param.set_value(rng.uniform(-bound, bound, param.shape).astype(np.float32))
        elif len(param.shape) == 1:
            leaf = name.rsplit(".", 1)[-1]
            param.set_value((np.zeros if leaf == "bias" else np.ones)(param.shape).astype(np.float32))
        else:  # the codebook
            param.set_value(rng.normal(0.0, 1.0, param.shape).astype(np.float32))


def optimiser(parameters: Iterable[paddle.Tensor], steps: int, peak_lr: float, warmup: int,
              weight_decay: float = 0.01) -> tuple[paddle.optimizer.AdamW, paddle.optimizer.lr.LRScheduler]:
    """AdamW with a linear warm-up and a cosine decay to a tenth of the peak, gradients clipped to norm 1."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    schedule = paddle.optimizer.lr.LambdaDecay(peak_lr, factor)
    return paddle.optimizer.AdamW(learning_rate=schedule, parameters=list(parameters), weight_decay=weight_decay,
                                  grad_clip=nn.ClipGradByGlobalNorm(1.0)), schedule


@dataclass
class Progress:
    """One line per stage, rewritten in place: step, losses (averaged since the last log line), rate, time left.
    Every `log_every` steps the averages also go to the loss log, one line each."""

    stage: str
    steps: int
    log: TextIO | None = None
    log_every: int = 25
    out: TextIO = field(default_factory=lambda: sys.stderr)
    _started: float = field(default_factory=time.perf_counter)
    _sums: dict[str, float] = field(default_factory=dict)
    _count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, step: int, **losses: float) -> None:
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1
        done = step + 1
        elapsed = time.perf_counter() - self._started
        left = elapsed / done * (self.steps - done)
        width = 24
        bar = "#" * int(width * done / self.steps)
        shown = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        self.out.write(f"\r{self.stage:<10} [{bar:<{width}}] {done}/{self.steps} {shown} "
                       f"{elapsed:5.0f}s elapsed, {left:4.0f}s left ")
        self.out.flush()
        if done % self.log_every == 0 or done == self.steps:
            means = {k: v / self._count for k, v in self._sums.items()}
            self.history.append({"step": done, **means})
            if self.log is not None:
                values = " ".join(f"{k}={v:.4f}" for k, v in means.items())
                self.log.write(f"{self.stage} step={done} elapsed_s={elapsed:.1f} {values}\n")
                self.log.flush()
            self._sums, self._count = {}, 0
        if done == self.steps:
            self.out.write("\n")
