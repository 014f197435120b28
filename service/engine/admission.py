"""Who runs: the bounded waiting queue, and admission by free rows and free KV blocks, first come first served.

The scheduler's first half (`Scheduler` plans and postprocesses the steps of what is admitted here). Pure Python.
`add` and `counts` are called from the asyncio side (the queue has a lock); everything else on the engine thread.

Admission refuses at once (Overloaded, with a Retry-After estimate) a request that would find the waiting queue full,
or that would wait for free rows longer than its own timeout: it could only time out.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from service.engine.block_manager import BlockManager
from service.engine.errors import Overloaded
from service.engine.prompt_blocks import PromptBlocks, image_spans
from service.engine.request import Request, Status
from service.engine.types import GenerateParams, Kind, Params
from service.engine.wait_estimate import HoldTimes, Running, admission_times, remaining_s

# Retry-After bounds: at least a second, and no longer than a client will wait before retrying (a longer wait is
# better found out by asking again than by sleeping on an estimate that the next minutes will change).
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0
DEFAULT_BLOCK_SIZE = 16


class Admission:
    def __init__(self, max_rows: int, max_waiting: int, clock: Callable[[], float],
                 blocks: BlockManager | None = None) -> None:
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.blocks = blocks or BlockManager(max_rows * 4096 // DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)
        self._lock = threading.Lock()
        self._waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.used = 0  # rows running
        self.hold = HoldTimes()  # learned row-holding time per kind, for the wait estimates
        self._clock = clock
        self._admitted_at: dict[Request, float] = {}

    def add(self, request: Request, also_queued: int = 0) -> None:
        """Queue a request; `also_queued`: requests ahead of it elsewhere (a generation request waits for the
        images still being decoded too)."""
        request.prompts = self.prompt_blocks(request.params)
        with self._lock:
            starts = self._admission_times([*self._waiting, request])
            if self._queued_beyond_free_rows(request) + also_queued > self.max_waiting:
                raise Overloaded(f"the server is at capacity ({self.max_rows} rows running, {len(self._waiting)} "
                                 "requests waiting); retry later", retry_after_s=self._retry_after(request, starts))
            timeout = request.timeout_s
            if timeout is not None and starts[-1] > timeout:
                raise Overloaded(f"the server is at capacity: this request would wait about {starts[-1]:.0f} s for "
                                 f"{len(request.rows)} free row(s), longer than its {timeout:g} s time limit; retry "
                                 "later", retry_after_s=self._retry_after(request, starts))
            self._waiting.append(request)

    def _admission_times(self, queue: list[Request]) -> list[float]:
        now = self._clock()
        running = [Running(len(r.rows), remaining_s(r, now - self._admitted_at.get(r, now), self.hold))
                   for r in list(self.running)]
        return admission_times(self.max_rows - self.used, running, queue, self.hold)

    def _retry_after(self, request: Request, starts: list[float]) -> float:
        """When the same request, sent again (and nothing else arriving), would be accepted: once enough of the
        queue ahead of it has been admitted, and once its own wait fits its timeout."""
        *ahead, own = starts
        at = own - request.timeout_s if request.timeout_s is not None else 0.0
        if self.max_waiting == 0:
            at = max(at, own)
        elif len(ahead) >= self.max_waiting:
            at = max(at, ahead[len(ahead) - self.max_waiting])
        return min(max(at, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def prompt_blocks(self, params: Params) -> list[PromptBlocks]:
        """The prompt(s) of a request cut into hashed blocks (generation: the conditional and, when guided, the
        unconditional prompt)."""
        size = self.blocks.block_size
        if isinstance(params, GenerateParams):
            cond = list(params.prompt_ids)
            prompts = [PromptBlocks(cond, size)]
            if params.guided:
                prompts.append(PromptBlocks([cond[0], *[params.pad_id] * (len(cond) - 2), cond[-1]], size))
            return prompts
        spans = image_spans(params.prompt_ids, params.image_id, params.image_hashes)
        return [PromptBlocks(list(params.prompt_ids), size, spans)]

    def worst_case_blocks(self, params: Params) -> int:
        """Blocks a request could hold at once with nothing reused."""
        if isinstance(params, GenerateParams):
            prompts, per_prompt = (2 if params.guided else 1), params.parallel_size
        else:
            prompts, per_prompt = 1, params.rows
        return prompts * self.blocks.worst_case(len(params.prompt_ids), per_prompt, params.max_len)

    def _queued_beyond_free_rows(self, newcomer: Request) -> int:
        """How many requests would wait with the newcomer added: those the next step cannot admit into the free
        rows and blocks (first come first served, so once one does not fit, all after it wait too)."""
        spare, spare_blocks = self.max_rows - self.used, self.blocks.available
        queue = [*self._waiting, newcomer]
        for position, request in enumerate(queue):
            blocks = self.worst_case_blocks(request.params)
            if len(request.rows) > spare or blocks > spare_blocks:
                return len(queue) - position
            spare -= len(request.rows)
            spare_blocks -= blocks
        return 0

    def counts(self) -> dict[str, int]:
        with self._lock:
            waiting = len(self._waiting)
        rows = {"understand": 0, "generate": 0}
        for request in list(self.running):
            rows[request.kind.value] += len(request.rows)
        return {"waiting": waiting, "running_understand_rows": rows["understand"],
                "running_generate_rows": rows["generate"], "free_rows": self.max_rows - self.used}

    def has_work(self) -> bool:
        return bool(self.running) or bool(self._waiting)

    def waiting(self) -> list[Request]:
        with self._lock:
            return list(self._waiting)

    # admission

    def admit(self) -> list[Request]:
        """Move waiting requests into free rows and blocks, first come first served (no overtaking, so none
        starves). Each takes the cached blocks of its prompt's longest known prefix; what it could still need is
        reserved, cached blocks of finished requests counting as free. A request whose prompt goes on with a block
        that a request admitted in the same call is about to compute waits one step (with those behind it) and
        then reuses that block: requests arriving together with a common prefix compute it once."""
        admitted: list[Request] = []
        computing: set[bytes] = set()  # full blocks that the prefills of the requests admitted here will write
        now = self._clock()
        with self._lock:
            while self._waiting and len(self._waiting[0].rows) <= self.max_rows - self.used:
                request = self._waiting[0]
                params = request.params
                rows = params.parallel_size if request.kind is Kind.GENERATE else params.rows  # per prompt
                matches = [self.blocks.match(prompt) for prompt in request.prompts]
                if any(len(m) < len(p.hashes) and p.hashes[len(m)] in computing
                       for p, m in zip(request.prompts, matches, strict=True)):
                    break  # one admitted just now computes its next block: a step later it reuses it instead
                if self.blocks.cost(request.prompts, matches, rows, params.max_len) > self.blocks.available:
                    break
                self._waiting.popleft()
                for row, prompt, matched in zip(request.prompt_rows, request.prompts, matches, strict=True):
                    row.table = self.blocks.admit(prompt, matched, rows, params.max_len)
                if self.blocks.prefix_caching:
                    computing.update(h for p, m in zip(request.prompts, matches, strict=True)
                                     for h in p.hashes[len(m):])
                request.cached_tokens = request.rows[0].table.length
                request.status = Status.RUNNING
                self.used += len(request.rows)
                self._admitted_at[request] = now
                admitted.append(request)
        self.running.extend(admitted)
        return admitted

    # leaving

    def leave(self, request: Request) -> None:
        """Take a request out of the queue or the running ones (its rows are the caller's to free)."""
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
        if request in self.running:
            self.running.remove(request)
            self.used -= len(request.rows)
            admitted_at = self._admitted_at.pop(request, None)
            if admitted_at is not None and _ran_to_its_end(request):
                self.hold.observe(request.kind, self._clock() - admitted_at)

    def find(self, request_id: str) -> Request | None:
        """The waiting or running request with this id."""
        return next((r for r in [*self.running, *self.waiting()] if r.id == request_id), None)

    def drain_waiting(self) -> list[Request]:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        return waiting


def _ran_to_its_end(request: Request) -> bool:
    """Cancelled and failed requests say nothing about how long a request holds its rows."""
    if request.kind is Kind.GENERATE:
        return request.steps_done >= request.generate.image_tokens
    return all(answer.finish_reason for answer in request.answers)
