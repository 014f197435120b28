"""Which requests run: admission by free KV-cache rows, a bounded waiting queue, and row bookkeeping.

Running rows always occupy slots 0..used-1 (the runner decodes them through zero-copy cache views). When a request
leaves, the rows in the highest slots move down into its holes; the scheduler records those moves and the runner
copies the caches before the next step. Pure Python: it never touches a tensor. Thread-safe where the asyncio side
calls it (`add`, `counts`).

Admission refuses at once (Overloaded, with a Retry-After estimate) a request that would find the waiting queue full,
or that would wait for free rows longer than its own timeout: it could only time out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from service.engine.errors import Overloaded
from service.engine.request import RequestState, Status
from service.engine.types import Kind
from service.engine.wait_estimate import HoldTimes, Running, admission_times, remaining_s

# Retry-After bounds: at least a second, and no longer than a client will wait before retrying (a longer wait is
# better found out by asking again than by sleeping on an estimate that the next minutes will change).
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0


class Scheduler:
    def __init__(self, max_rows: int, max_waiting: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self._owner: list[RequestState | None] = [None] * max_rows  # slot -> request using it
        self.used = 0  # slots 0..used-1 hold running rows
        self.moves: list[tuple[int, int]] = []  # (from, to) cache copies owed before the next decode
        self.hold = HoldTimes()  # learned row-holding time per kind, for the wait estimates
        self._clock = clock
        self._admitted_at: dict[RequestState, float] = {}

    def add(self, request: RequestState, also_queued: int = 0) -> None:
        """Queue a request; `also_queued`: requests ahead of it elsewhere (a generation request waits for the
        images still being decoded too)."""
        with self._lock:
            starts = self._admission_times([*self._waiting, request])
            if self._queued_beyond_free_rows(request) + also_queued > self.max_waiting:
                raise Overloaded(f"the server is at capacity ({self.max_rows} rows running, {len(self._waiting)} "
                                 "requests waiting); retry later", retry_after_s=self._retry_after(request, starts))
            timeout = request.params.timeout_s
            if timeout is not None and starts[-1] > timeout:
                raise Overloaded(f"the server is at capacity: this request would wait about {starts[-1]:.0f} s for "
                                 f"{request.rows} free row(s), longer than its {timeout:g} s time limit; retry later",
                                 retry_after_s=self._retry_after(request, starts))
            self._waiting.append(request)

    def _admission_times(self, queue: list[RequestState]) -> list[float]:
        now = self._clock()
        running = [Running(r.rows, remaining_s(r, now - self._admitted_at.get(r, now), self.hold))
                   for r in list(self.running)]
        return admission_times(self.max_rows - self.used, running, queue, self.hold)

    def _retry_after(self, request: RequestState, starts: list[float]) -> float:
        """When the same request, sent again (and nothing else arriving), would be accepted: once enough of the
        queue ahead of it has been admitted, and once its own wait fits its timeout."""
        *ahead, own = starts
        at = own - request.params.timeout_s if request.params.timeout_s is not None else 0.0
        if self.max_waiting == 0:
            at = max(at, own)
        elif len(ahead) >= self.max_waiting:
            at = max(at, ahead[len(ahead) - self.max_waiting])
        return min(max(at, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def _queued_beyond_free_rows(self, newcomer: RequestState) -> int:
        """How many requests would wait with the newcomer added: those the next step cannot admit into the free
        rows (first come first served, so once one does not fit, all after it wait too)."""
        spare = self.max_rows - self.used
        queue = [*self._waiting, newcomer]
        for position, request in enumerate(queue):
            if request.rows > spare:
                return len(queue) - position
            spare -= request.rows
        return 0

    def counts(self) -> dict[str, int]:
        with self._lock:
            waiting = len(self._waiting)
        rows = {"understand": 0, "generate": 0}
        for request in list(self.running):
            rows[request.kind.value] += request.rows
        return {"waiting": waiting, "running_understand_rows": rows["understand"],
                "running_generate_rows": rows["generate"], "free_rows": self.max_rows - self.used}

    def has_work(self) -> bool:
        return bool(self.running) or bool(self._waiting)

    def drop_abandoned(self, now: float) -> list[RequestState]:
        """Remove cancelled or expired requests, waiting or running; their rows become free at once."""
        dropped = [r for r in self.running if r.handle.cancelled or now > r.deadline]
        for request in dropped:
            self.finish(request)
        with self._lock:
            stale = [r for r in self._waiting if r.handle.cancelled or now > r.deadline]
            for request in stale:
                self._waiting.remove(request)
        return dropped + stale

    def admit(self) -> list[RequestState]:
        """Move waiting requests into free rows, first come first served (no overtaking, so none starves)."""
        admitted: list[RequestState] = []
        now = self._clock()
        with self._lock:
            while self._waiting and self._waiting[0].rows <= self.max_rows - self.used:
                request = self._waiting.popleft()
                request.slots = list(range(self.used, self.used + request.rows))
                for slot in request.slots:
                    self._owner[slot] = request
                self.used += request.rows
                request.status = Status.RUNNING
                self._admitted_at[request] = now
                admitted.append(request)
        self.running.extend(admitted)
        return admitted

    def finish(self, request: RequestState) -> None:
        if request in self.running:
            self.running.remove(request)
            for slot in request.slots:
                self._owner[slot] = None
            self._compact()
            admitted_at = self._admitted_at.pop(request, None)
            if admitted_at is not None and _ran_to_its_end(request):
                self.hold.observe(request.kind, self._clock() - admitted_at)
        request.status = Status.FINISHED

    def release_row(self, request: RequestState, index: int) -> None:
        """Row `index` of a running request is done while its others go on (one of several answers ended): its
        slot is free at once, and the rows after it in the request move up one index."""
        assert request in self.running and len(request.slots) > 1
        slot = request.slots.pop(index)
        self._owner[slot] = None
        self._compact()

    def _compact(self) -> None:
        """Fill holes below the top with the topmost rows, recording each move."""
        while self.used and self._owner[self.used - 1] is None:
            self.used -= 1
        hole = 0
        while True:
            while hole < self.used and self._owner[hole] is not None:
                hole += 1
            if hole >= self.used:
                return
            top = self.used - 1
            mover = self._owner[top]
            assert mover is not None
            mover.slots[mover.slots.index(top)] = hole
            self._owner[hole], self._owner[top] = mover, None
            self.moves.append((top, hole))
            while self.used and self._owner[self.used - 1] is None:
                self.used -= 1

    def take_moves(self) -> list[tuple[int, int]]:
        moves, self.moves = self.moves, []
        return moves

    def drain_waiting(self) -> list[RequestState]:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        return waiting


def _ran_to_its_end(request: RequestState) -> bool:
    """Cancelled and failed requests say nothing about how long a request holds its rows."""
    if request.kind is Kind.GENERATE:
        return request.steps_done >= request.generate.image_tokens
    return all(answer.finish_reason for answer in request.answers)
