"""Teaches the VQ decoder (the published LlamaGen architecture, `model.vq_decoder`) to draw the pictures back from
their patch-codebook tokens: pixels in [-1, 1], mean squared error, the codebook's 8-dimensional entries learned
with the convolutions."""

from __future__ import annotations

from typing import TextIO

import numpy as np
import paddle

from model.vq_decoder import VQDecoder
from training.optimisation import Progress, optimiser


def train_decoder(decoder: VQDecoder, tokens: np.ndarray, pictures: np.ndarray, steps: int, batch: int,
                  rng: np.random.Generator, peak_lr: float = 4e-3, log: TextIO | None = None) -> list[dict]:
    """tokens [N, grid * grid], pictures uint8 [N, S, S, 3] (S the decoder's image size). Returns the loss log."""
    opt, schedule = optimiser(decoder.parameters(), steps, peak_lr, warmup=max(1, steps // 20), weight_decay=0.0)
    progress = Progress("decoder", steps, log=log)
    decoder.train()
    for step in range(steps):
        chosen = rng.integers(len(tokens), size=batch)
        target = paddle.to_tensor(pictures[chosen].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
        loss = ((decoder(paddle.to_tensor(tokens[chosen])) - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        progress.update(step, mse=float(loss))
    decoder.eval()
    return progress.history
