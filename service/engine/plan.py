"""What passes between the scheduler and the runner in one step: the plan, and the runner's output aligned with it.

    plan = scheduler.schedule()      # which rows draw a token, and what each feeds
    out = runner.run(plan)           # the forward and the sampling: out.tokens[i] belongs to plan.rows[i]
    scheduler.postprocess(plan, out) # tokens appended, ends checked, rows given back

A prefill step computes the prompts of requests admitted together and draws the first token of every one of their
rows (rows that share a prompt take its logits). A decode step is one forward over every running row: each feeds
its last token, and any drafts after it, so a row may append several positions in one step and keep only the ones
whose tokens are accepted (the scheduler cuts it back).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from service.engine.request import Request, Row
from service.engine.types import TokenLogprob


@dataclass(slots=True)
class Plan:
    rows: list[Row] = field(default_factory=list)  # the rows that draw this step, each request's together, in order
    inputs: list[list[int]] = field(default_factory=list)  # decode: the ids each row feeds (its last, then drafts)
    prefill: list[Request] = field(default_factory=list)  # prefill: the requests whose prompts run together
    copies: list[tuple[int, int]] = field(default_factory=list)  # KV block copies owed before the forward

    @property
    def empty(self) -> bool:
        return not self.rows

    def by_request(self) -> Iterator[tuple[Request, range]]:
        """Each request with the indices of its rows in `rows` (consecutive)."""
        start = 0
        while start < len(self.rows):
            request, end = self.rows[start].request, start + 1
            while end < len(self.rows) and self.rows[end].request is request:
                end += 1
            yield request, range(start, end)
            start = end


@dataclass(slots=True)
class StepOutput:
    """The runner's answer to a plan, aligned with `plan.rows`."""

    tokens: list[list[int]]  # the tokens each row keeps, in order: one for a plain step, none for a failed request
    logprobs: list[list[TokenLogprob]]  # one per kept token, for the rows whose request asks for them (else empty)
    failed: dict[Request, str] = field(default_factory=dict)  # requests whose step failed, and why
    # decode steps of speculative requests: each row's image logits [fed positions, V] (others: None); their
    # tokens are left to the scheduler, which verifies the drafts
    logits: list[np.ndarray | None] = field(default_factory=list)
