"""Token choice from logits, on the host, with one seeded generator per request.

Sampling happens in numpy with the request's own `numpy.random.Generator`, consuming its random stream in row order,
so a request's choices depend only on its logits and its seed: never on which other rows share the batch.
"""

from __future__ import annotations

import numpy as np


def guided_logits(cond: np.ndarray, uncond: np.ndarray, cfg_weight: float) -> np.ndarray:
    """Classifier-free guidance: uncond + w * (cond - uncond). With w == 1 this is cond itself.

    Half-precision logits are combined in float32: w times their difference can pass float16's 65504."""
    if cfg_weight == 1.0:
        return cond
    dtype = np.promote_types(cond.dtype, np.float32)
    cond, uncond = cond.astype(dtype, copy=False), uncond.astype(dtype, copy=False)
    return uncond + cfg_weight * (cond - uncond)


def choose(logits: np.ndarray, temperature: float, rng: np.random.Generator, top_p: float = 1.0) -> np.ndarray:
    """logits [R, V] -> token ids [R]. temperature 0 is greedy; otherwise softmax(logits / T), optional nucleus."""
    probs = distribution(logits, temperature, top_p)
    return logits.argmax(axis=-1) if probs is None else draw(probs, rng)


def distribution(logits: np.ndarray, temperature: float, top_p: float = 1.0) -> np.ndarray | None:
    """The probabilities [R, V] (float64) a draw picks from, or None when the choice is greedy (argmax)."""
    if temperature <= 0.0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = logits.astype(np.float64) / temperature
        scaled -= scaled.max(axis=-1, keepdims=True)
    if not np.isfinite(scaled).all():
        # a temperature so small that logits / T overflows: its limit, greedy choice
        return None
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from probs [R, V], consuming R numbers of the generator's stream."""
    draws = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=-1)
    cdf[:, -1] = np.inf  # float rounding must never push a draw past the last token
    return (cdf < draws[:, None]).sum(axis=-1)


def log_probs(logits: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
    """Log-probabilities [R, V] (float64) of the distribution a choice came from: `probs` when it was drawn
    (temperature and nucleus applied; tokens outside the nucleus are -inf), else, for a greedy choice, the model's
    own softmax."""
    if probs is not None:
        with np.errstate(divide="ignore"):
            return np.log(probs)
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    # keep the smallest prefix whose mass reaches top_p, and always the top token (top_p 0 means just that one)
    keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
    keep_sorted[:, 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)
