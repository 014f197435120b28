"""How long a newcomer would wait for free rows: learned row-holding times per request kind, and a replay of
first-come-first-served admission over the running and waiting requests. Pure Python, no tensors.

Row-holding time is admission to release (the rows' part of a request: prefill and decode steps, not the queue
and not the image encoding after it), smoothed per kind, from requests that ran to their end.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from service.engine.request import Request
from service.engine.types import Kind

SMOOTHING = 0.2  # weight of the newest observation


class HoldTimes:
    """Smoothed seconds a request of each kind holds its rows. Unknown until one has finished: a kind never seen
    counts as instant, so the estimate errs towards admitting."""

    def __init__(self) -> None:
        self._seconds: dict[Kind, float] = {}

    def observe(self, kind: Kind, seconds: float) -> None:
        previous = self._seconds.get(kind)
        self._seconds[kind] = seconds if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * seconds

    def get(self, kind: Kind) -> float:
        return self._seconds.get(kind, 0.0)

    def known(self) -> dict[Kind, float]:
        return dict(self._seconds)


@dataclass(frozen=True, slots=True)
class Running:
    rows: int
    remaining_s: float


def remaining_s(request: Request, running_for_s: float, hold: HoldTimes) -> float:
    """A running request's rows are free in about this long. A generation request knows its progress (its steps
    all take about as long); an understanding request is at most its usual time in (its answer may stop early)."""
    if request.kind is Kind.GENERATE and request.steps_done > 0:
        total = request.generate.image_tokens
        return running_for_s * (total - request.steps_done) / request.steps_done
    return max(hold.get(request.kind) - running_for_s, 0.0)


def admission_times(free_rows: int, running: Sequence[Running], waiting: Sequence[Request],
                    hold: HoldTimes) -> list[float]:
    """Seconds from now until each waiting request is admitted, in queue order (first come first served: a
    request waits for the one before it even when it would fit sooner). `inf` for one that can never fit."""
    releases = [(r.remaining_s, r.rows) for r in running]
    heapq.heapify(releases)
    clock, free, starts = 0.0, free_rows, []
    for request in waiting:
        needs = len(request.rows)
        while needs > free and releases:
            at, rows = heapq.heappop(releases)
            clock, free = max(clock, at), free + rows
        if needs > free:
            starts.append(float("inf"))
            continue
        starts.append(clock)
        free -= needs
        heapq.heappush(releases, (clock + hold.get(request.kind), needs))
    return starts
