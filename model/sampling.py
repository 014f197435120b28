"""Token choice from logits, on the host, with one seeded generator per request.

Sampling happens in numpy with the request's own `numpy.random.Generator`, consuming its random stream in row order,
so a request's choices depend only on its logits and its seed: never on which other rows share the batch.
"""

from __future__ import annotations

import numpy as np


def guided_logits(cond: np.ndarray, uncond: np.ndarray, cfg_weight: float) -> np.ndarray:
    """Classifier-free guidance: uncond + w * (cond - uncond). With w == 1 this is cond itself."""
    if cfg_weight == 1.0:
        return cond
    return uncond + cfg_weight * (cond - uncond)


def choose(logits: np.ndarray, temperature: float, rng: np.random.Generator, top_p: float = 1.0) -> np.ndarray:
    """logits [R, V] -> token ids [R]. temperature 0 is greedy; otherwise softmax(logits / T), optional nucleus."""
    if temperature <= 0.0:
        return logits.argmax(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = logits.astype(np.float64) / temperature
        scaled -= scaled.max(axis=-1, keepdims=True)
    if not np.isfinite(scaled).all():
        # a temperature so small that logits / T overflows: its limit, greedy choice
        return logits.argmax(axis=-1)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    draws = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=-1)
    cdf[:, -1] = np.inf  # float rounding must never push a draw past the last token
    return (cdf < draws[:, None]).sum(axis=-1)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always at least the top token)
    keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)
