"""Which requests run: admission by free rows and free KV blocks, a bounded waiting queue, and the KV bookkeeping of
running rows through the block manager (the one owner of KV memory).

Pure Python: it never touches a tensor. Thread-safe where the asyncio side calls it (`add`, `counts`). Request state
that concerns rows and blocks (status, block tables, lengths) is written here and nowhere else; the runner only
reads it.

Admission refuses at once (Overloaded, with a Retry-After estimate) a request that would find the waiting queue full,
or that would wait for free rows longer than its own timeout: it could only time out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from service.engine.block_manager import BlockManager, BlockTable
from service.engine.errors import Overloaded
from service.engine.prompt_blocks import PromptBlocks, image_hash, image_spans
from service.engine.request import RequestState, Status
from service.engine.types import GenerateParams, Kind, Params
from service.engine.wait_estimate import HoldTimes, Running, admission_times, remaining_s

# Retry-After bounds: at least a second, and no longer than a client will wait before retrying (a longer wait is
# better found out by asking again than by sleeping on an estimate that the next minutes will change).
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0
DEFAULT_BLOCK_SIZE = 16


class Scheduler:
    def __init__(self, max_rows: int, max_waiting: int, clock: Callable[[], float] = time.perf_counter,
                 blocks: BlockManager | None = None) -> None:
        """blocks: the KV pool's manager; None: one large enough never to bind (tests of rows alone)."""
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.blocks = blocks or BlockManager(max_rows * 4096 // DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)
        self._lock = threading.Lock()
        self._waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self.used = 0  # rows running
        self.hold = HoldTimes()  # learned row-holding time per kind, for the wait estimates
        self._clock = clock
        self._admitted_at: dict[RequestState, float] = {}

    def add(self, request: RequestState, also_queued: int = 0) -> None:
        """Queue a request; `also_queued`: requests ahead of it elsewhere (a generation request waits for the
        images still being decoded too)."""
        request.prompts = self.prompt_blocks(request)
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

    def prompt_blocks(self, request: RequestState) -> list[PromptBlocks]:
        """The prompt(s) of a request cut into hashed blocks (generation: the conditional and, when guided, the
        unconditional prompt)."""
        size = self.blocks.block_size
        params = request.params
        if request.kind is Kind.GENERATE:
            cond = list(params.prompt_ids)
            prompts = [PromptBlocks(cond, size)]
            if request.generate.guided:
                prompts.append(PromptBlocks([cond[0], *[request.generate.pad_id] * (len(cond) - 2), cond[-1]], size))
            return prompts
        understand = request.understand
        hashes = understand.image_hashes
        if not hashes and understand.pixel_values is not None:
            hashes = tuple(image_hash(pixels) for pixels in understand.pixel_values)
        return [PromptBlocks(list(params.prompt_ids), size, image_spans(params.prompt_ids, understand.image_id,
                                                                         hashes))]

    def worst_case_blocks(self, params: Params) -> int:
        """Blocks a request could hold at once with nothing reused."""
        if isinstance(params, GenerateParams):
            prompts, per_prompt = (2 if params.guided else 1), params.parallel_size
        else:
            prompts, per_prompt = 1, params.rows
        return prompts * self.blocks.worst_case(len(params.prompt_ids), per_prompt, params.max_len)

    def _queued_beyond_free_rows(self, newcomer: RequestState) -> int:
        """How many requests would wait with the newcomer added: those the next step cannot admit into the free
        rows and blocks (first come first served, so once one does not fit, all after it wait too)."""
        spare, spare_blocks = self.max_rows - self.used, self.blocks.available
        queue = [*self._waiting, newcomer]
        for position, request in enumerate(queue):
            blocks = self.worst_case_blocks(request.params)
            if request.rows > spare or blocks > spare_blocks:
                return len(queue) - position
            spare -= request.rows
            spare_blocks -= blocks
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

    # admission

    def admit(self) -> list[RequestState]:
        """Move waiting requests into free rows and blocks, first come first served (no overtaking, so none
        starves). Each takes the cached blocks of its prompt's longest known prefix; what it could still need is
        reserved, cached blocks of finished requests counting as free. A request whose prompt goes on with a block
        that a request admitted in the same call is about to compute waits one step (with those behind it) and
        then reuses that block: requests arriving together with a common prefix compute it once."""
        admitted: list[RequestState] = []
        computing: set[bytes] = set()  # full blocks that the prefills of the requests admitted here will write
        now = self._clock()
        with self._lock:
            while self._waiting and self._waiting[0].rows <= self.max_rows - self.used:
                request = self._waiting[0]
                params = request.params
                rows = params.parallel_size if request.kind is Kind.GENERATE else params.rows
                matches = [self.blocks.match(prompt) for prompt in request.prompts]
                if any(len(m) < len(p.hashes) and p.hashes[len(m)] in computing
                       for p, m in zip(request.prompts, matches, strict=True)):
                    break  # one admitted just now computes its next block: a step later it reuses it instead
                if self.blocks.cost(request.prompts, matches, rows, params.max_len) > self.blocks.available:
                    break
                self._waiting.popleft()
                request.tables = [self.blocks.admit(prompt, matched, rows, params.max_len)
                                  for prompt, matched in zip(request.prompts, matches, strict=True)]
                if self.blocks.prefix_caching:
                    computing.update(h for p, m in zip(request.prompts, matches, strict=True)
                                     for h in p.hashes[len(m):])
                request.cached_tokens = request.tables[0].length
                request.status = Status.RUNNING
                self.used += request.rows
                self._admitted_at[request] = now
                admitted.append(request)
        self.running.extend(admitted)
        return admitted

    def prefilled(self, request: RequestState) -> list[tuple[int, int]]:
        """The prefill wrote the request's prompt(s): enter their blocks in the prefix table and split each prompt
        into its rows. Returns the block copies the runner owes before the next forward."""
        rows = request.generate.parallel_size if request.kind is Kind.GENERATE else request.understand.n
        tables: list[BlockTable] = []
        for prompt, table in zip(request.prompts, request.tables, strict=True):
            table.length = len(prompt)
            self.blocks.register_prompt(table, prompt)
            tables += [table, *self.blocks.fork(table, rows - 1)]
        request.tables = tables
        return self.blocks.take_copies()

    # decoding

    def prepare_step(self, requests: list[RequestState]) -> None:
        """Every row gets a block for the position the next step writes."""
        for request in requests:
            for table in request.tables:
                self.blocks.ensure(table, table.length + 1)

    def stepped(self, requests: list[RequestState]) -> None:
        """The step wrote one position for every row."""
        for request in requests:
            for table in request.tables:
                table.length += 1

    # leaving

    def finish(self, request: RequestState) -> None:
        if request in self.running:
            self.running.remove(request)
            self.used -= request.rows
            for index in range(len(request.tables)):
                self._free_row(request, index)
            request.tables = []
            admitted_at = self._admitted_at.pop(request, None)
            if admitted_at is not None and _ran_to_its_end(request):
                self.hold.observe(request.kind, self._clock() - admitted_at)
        request.status = Status.FINISHED

    def release_row(self, request: RequestState, index: int) -> None:
        """Row `index` of a running request is done while its others go on (one of several answers ended): its
        blocks go back at once, and the rows after it move up one index. Call it before dropping `live[index]`."""
        assert request in self.running and len(request.tables) > 1
        self._free_row(request, index)
        request.tables.pop(index)
        self.used -= 1

    def _free_row(self, request: RequestState, index: int) -> None:
        """Give a row's blocks back; an understanding row first enters its full blocks (prompt and answer) in the
        prefix table, for a later turn of the conversation."""
        table = request.tables[index]
        prompt = request.prompts[0]
        if request.kind is Kind.UNDERSTAND and table.length >= len(prompt):
            fed = request.live[index].token_ids[:table.length - len(prompt)]  # the last one drawn is not fed yet
            self.blocks.register(table, prompt.ids + fed, prompt.images)
        self.blocks.free(table)

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
