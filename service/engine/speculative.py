"""Speculative Jacobi decoding of generated images: each image (its conditional and unconditional rows together)
feeds its last token and a window of draft tokens in one step, and keeps the drafts the guided distribution accepts.

One step of an image that fed its last token and drafts d_1..d_n gets the guided distributions p_0..p_n (p_j follows
the fed token j; p_0 is exact, p_j for j > 0 is exact while d_1..d_j are all kept). Draft d_j, drawn from q_j, is
accepted with probability min(1, p_{j-1}(d_j) / q_j(d_j)); at the first rejection the image takes a token from the
normalised residual max(0, p_{j-1} - q_j) and the step ends; when every draft is accepted it also takes a bonus
token from p_n. Each kept token then has exactly the distribution plain sampling gives it (speculative sampling),
whatever the drafts were, as long as a draft is drawn from its q independently of the test's random numbers.

The next window's drafts are the Jacobi iterate: the positions after the kept tokens are drafted from this step's
distributions there (p_{j+1}.. for a rejection at j, conditioned on the rejected draft: a guess, not the target), and
positions past what was fed from the last fed position's distribution (neighbouring image tokens are alike: a flat
region repeats a code; before the first step, the uniform distribution). Drafting is coupled across steps (MC-SJD): a
position's drafts are all drawn with one Gumbel noise vector, argmax(log q + g), fixed from the moment the position
enters the window until its token is kept, so a position whose forecast hardly moves keeps its draft and is
accepted. The noise of a position only ever chose drafts of that position, never a distribution it is tested
against, so each draft is still an independent draw from its q.

Temperature 0 is the greedy limit: a draft is kept when it equals the argmax, else the argmax replaces it; the tokens
are exactly those of plain greedy decoding. Every number comes from the request's generator, image by image in
order, so a seed gives the same images whatever else shares the steps (not the same images as plain sampling: the
same distribution, other draws).

Called by the scheduler after each step of a request that decodes speculatively; it writes the rows' drafts only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.sampling import distribution, draw, guided_logits
from service.engine.config import EngineConfig
from service.engine.request import Row
from service.engine.types import GenerateParams, Params


@dataclass(slots=True)
class _Window:
    """One image's drafts beyond its last token."""

    forecasts: list[np.ndarray | None] = field(default_factory=list)  # each draft's q (None: uniform)
    noise: list[np.ndarray] = field(default_factory=list)  # each draft position's Gumbel noise (coupled drafting)


@dataclass(slots=True)
class StepCount:
    """What the drafts of one step came to, for the metrics."""

    drafted: int = 0  # drafts verified
    accepted: int = 0  # of them kept
    forwards: int = 0  # images that took part in the step
    tokens: int = 0  # tokens those images kept

    def add(self, other: StepCount) -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.forwards += other.forwards
        self.tokens += other.tokens


class Speculation:
    """One generation request's drafting state, image by image."""

    def __init__(self, params: GenerateParams, window: int, vocab: int, coupled: bool = True,
                 carry: bool = True) -> None:
        """window: drafts per image and step (at most; fewer near the image's end); vocab: the image vocabulary;
        coupled: one Gumbel noise per position for all its drafts (off: fresh noise at every redraft, plain SJD);
        carry: positions past the fed ones drafted from the last one's distribution (off: uniform, plain SJD)."""
        if window < 1:
            raise ValueError("the speculative window must be >= 1")
        self.params = params
        self.window = window
        self.vocab = vocab
        self.coupled = coupled
        self.carry = carry
        self._windows = [_Window() for _ in range(params.parallel_size)]

    def step(self, rows: list[Row], inputs: list[list[int]], tokens: list[list[int]],
             logits: list[np.ndarray] | None, rng: np.random.Generator) -> tuple[list[list[int]], StepCount]:
        """The step's rows of the request (the conditional rows of the images still drawing, then their
        unconditional twins) and what each fed -> the tokens each row keeps; the next drafts are set on the rows.
        logits: each row's image logits [fed positions, V] of a decode step; None after the prefill, whose
        `tokens` are kept as drawn."""
        images = len(rows) // 2 if self.params.guided else len(rows)
        count = StepCount()
        kept: list[list[int]] = []
        for i in range(images):
            row, drafts = rows[i], inputs[i][1:]
            window = self._windows[row.index]
            if logits is None:
                new, probs, best = tokens[i], None, None
            else:
                mixed = logits[i] if not self.params.guided else guided_logits(
                    logits[i], logits[images + i], self.params.cfg_weight)
                probs = distribution(mixed, self.params.temperature)
                best = mixed.argmax(axis=-1)
                new = _verify(drafts, window.forecasts, probs, best, rng)
                count.drafted += len(drafts)
                count.accepted += len(new) - 1
                count.forwards += 1
                count.tokens += len(new)
            self._redraft(window, row, len(drafts), len(new), probs, best, rng)
            kept.append(new)
        for i in range(images, len(rows)):  # the unconditional twins feed the same drafts
            rows[i].drafts = list(rows[i - images].drafts)
        return kept + kept[:len(rows) - images], count

    def _redraft(self, window: _Window, row: Row, fed: int, kept: int, probs: np.ndarray | None,
                 best: np.ndarray | None, rng: np.random.Generator) -> None:
        """The drafts after an image's `kept` new tokens (not in `row.tokens` yet), `fed` drafts having been
        verified: drafted from this step's distributions where it computed them (p_kept..p_fed), from p_fed after
        (carry) or the uniform one, as many as the window and the image's end allow."""
        remaining = self.params.image_tokens - len(row.tokens) - kept
        size = max(0, min(self.window, remaining - 1))
        noise = window.noise[kept:] if self.coupled else []
        noise += [_gumbel(rng, self.vocab) for _ in range(size - len(noise))]
        drafts: list[int] = []
        forecasts: list[np.ndarray | None] = []
        for j in range(size):
            # position j of the new window follows fed position kept + j
            source = None if best is None else min(kept + j, fed) if self.carry else (
                kept + j if kept + j <= fed else None)
            q = probs[source] if source is not None and probs is not None else None
            if source is not None and probs is None:  # greedy: the forecast's argmax
                drafts.append(int(best[source]))
            elif q is None:
                drafts.append(int(np.argmax(noise[j])))
            else:
                with np.errstate(divide="ignore"):
                    drafts.append(int(np.argmax(np.log(q) + noise[j])))
            forecasts.append(q)
        window.forecasts, window.noise = forecasts, noise[:size]
        row.drafts = drafts


def _verify(drafts: list[int], forecasts: list[np.ndarray | None], probs: np.ndarray | None, best: np.ndarray,
            rng: np.random.Generator) -> list[int]:
    """One image's kept tokens: the accepted drafts, then a corrected token (first rejection) or a bonus one."""
    kept: list[int] = []
    for j, draft in enumerate(drafts):
        if probs is None:  # greedy
            if draft != int(best[j]):
                return [*kept, int(best[j])]
            kept.append(draft)
            continue
        p, q = probs[j], forecasts[j]
        uniform = 1.0 / p.shape[-1]
        q_draft = uniform if q is None else float(q[draft])
        # accept with probability min(1, p/q): u * q < p for u uniform in [0, 1)
        if rng.random() * q_draft < p[draft]:
            kept.append(draft)
            continue
        residual = np.maximum(p - (uniform if q is None else q), 0.0)
        total = residual.sum()
        # p <= q everywhere means p == q: no rejection is possible but for rounding; then p itself is right
        return [*kept, int(draw((residual / total if total > 0 else p)[None], rng)[0])]
    n = len(drafts)
    return [*kept, int(best[n]) if probs is None else int(draw(probs[n][None], rng)[0])]


def _gumbel(rng: np.random.Generator, size: int) -> np.ndarray:
    """Standard Gumbel noise: argmax(log q + g) is a draw from q."""
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(rng.random(size)))


def speculation_for(params: Params, config: EngineConfig, vocab: int) -> Speculation | None:
    """A generation's drafting state when it decodes speculatively (its own choice, else the engine's). A request
    of many images gets a smaller window, so that its rows feed at most `speculative_positions` positions a step
    (past that a step costs about as much more as it feeds: the drafts no longer come nearly free), and none when
    even one draft each would pass it. The window depends on the request alone, never on what else runs: the same
    seed draws the same images whatever the batch."""
    if not isinstance(params, GenerateParams):
        return None
    wanted = config.speculative if params.speculative is None else params.speculative
    window = config.speculative_window
    if config.speculative_positions:
        window = min(window, config.speculative_positions // params.rows - 1)
    return Speculation(params, window, vocab) if wanted and window >= 1 else None
