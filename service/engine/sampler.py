"""One request's next tokens from its rows' logits, with its own seeded generator (`model/sampling.py`).

The generator's numbers go to the request's rows in row order, so a request draws the same tokens whatever else
shares the step. A guided image combines its conditional and unconditional rows' logits and both rows take the token.
"""

from __future__ import annotations

import numpy as np

from model.sampling import choose, distribution, draw, guided_logits, log_probs
from service.engine.request import Request
from service.engine.types import Kind, TokenLogprob


def sample(request: Request, logits: np.ndarray) -> tuple[np.ndarray, list[TokenLogprob]]:
    """logits [rows, V] of the request's running rows -> a token per row [rows], and with log-probabilities asked
    for, an entry per row (else none)."""
    if request.kind is Kind.GENERATE:
        params = request.generate
        P = params.parallel_size
        mixed = guided_logits(logits[:P], logits[P:], params.cfg_weight) if params.guided else logits
        chosen = choose(mixed, params.temperature, request.rng)
        return np.tile(chosen, len(logits) // P), []
    params = request.understand
    if params.logprobs is None:
        return choose(logits, params.temperature, request.rng, params.top_p), []
    probs = distribution(logits, params.temperature, params.top_p)
    chosen = logits.argmax(axis=-1) if probs is None else draw(probs, request.rng)
    logprobs = log_probs(logits, probs)
    return chosen, [token_logprob(row, int(token), params.logprobs) for row, token in zip(logprobs, chosen,
                                                                                          strict=True)]


def token_logprob(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """logprobs [V] of one row -> the chosen token's value and the `top` likeliest (id, value), likeliest first."""
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = [(int(i), float(logprobs[i])) for i in ids]
    return TokenLogprob(float(logprobs[token]), best)
