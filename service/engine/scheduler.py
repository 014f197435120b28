"""Which requests run: admission by free KV-cache rows, a bounded waiting queue, and row bookkeeping.

Pure Python: it never touches a tensor. Thread-safe where the asyncio side calls it (`add`, `counts`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from service.engine.errors import Overloaded
from service.engine.request import RequestState, Status


class Scheduler:
    def __init__(self, max_rows: int, max_waiting: int) -> None:
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self._free = list(range(max_rows - 1, -1, -1))  # a stack: low slots are reused first
        self.avg_request_s = 5.0  # smoothed service time, for Retry-After

    def add(self, request: RequestState) -> None:
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"the server is at capacity ({self.max_rows} rows running, {len(self._waiting)} "
                                 "requests waiting); retry later", retry_after_s=self.retry_after())
            self._waiting.append(request)

    def retry_after(self) -> float:
        busy = max(1, len(self.running))
        return max(1.0, self.avg_request_s * (len(self._waiting) + 1) / busy)

    def counts(self) -> dict[str, int]:
        with self._lock:
            waiting = len(self._waiting)
        rows = {"understand": 0, "generate": 0}
        for request in list(self.running):
            rows[request.kind.value] += request.rows
        return {"waiting": waiting, "running_understand_rows": rows["understand"],
                "running_generate_rows": rows["generate"], "free_rows": len(self._free)}

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
        with self._lock:
            while self._waiting and self._waiting[0].rows <= len(self._free):
                request = self._waiting.popleft()
                request.slots = [self._free.pop() for _ in range(request.rows)]
                request.status = Status.RUNNING
                admitted.append(request)
        self.running.extend(admitted)
        return admitted

    def finish(self, request: RequestState) -> None:
        if request in self.running:
            self.running.remove(request)
            self._free.extend(reversed(request.slots))
            elapsed = time.perf_counter() - request.submitted_at
            self.avg_request_s = 0.8 * self.avg_request_s + 0.2 * elapsed
        request.status = Status.FINISHED

    def drain_waiting(self) -> list[RequestState]:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        return waiting
