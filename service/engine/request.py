"""One request's state inside the engine, and the handle the asyncio side holds for it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from service.engine.block_manager import BlockTable
from service.engine.errors import EngineError
from service.engine.prompt_blocks import PromptBlocks
from service.engine.types import (
    Answer,
    ErrorEvent,
    Event,
    FinishedEvent,
    GenerateParams,
    Kind,
    Params,
    PreviewEvent,
    ProgressEvent,
    Result,
    StopWatch,
    Timings,
    TokenEvent,
    TokenLogprob,
    UnderstandParams,
)

# Request ids are `req-<process>-<n>`: a random tag per process, so ids do not start over when the server restarts
# (logs and clients keep telling requests apart across restarts and replicas), then a counter, so that within one
# process they stay short and in order.
_PROCESS_TAG = secrets.token_hex(4)
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req-{_PROCESS_TAG}-{next(_ids)}"


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class RequestHandle:
    """The asyncio side's view of a request: its event stream and a way to cancel it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, stream: bool = True) -> None:
        self.id = request_id
        self._loop = loop
        self.stream = stream  # False: only the final event is delivered (no per-token wake-ups, no previews)
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False  # read by the engine thread; a plain bool is enough (set once, never cleared)
        self._done = False

    def deliver(self, event: Event) -> None:
        """Called from the engine thread."""
        if not self.stream and isinstance(event, TokenEvent | ProgressEvent | PreviewEvent):
            return
        # RuntimeError: the event loop is gone (server shut down), so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self) -> AsyncIterator[Event]:
        while not self._done:
            event = await self._queue.get()
            if isinstance(event, FinishedEvent | ErrorEvent):
                self._done = True
            yield event

    async def result(self) -> Result:
        async for event in self.events():
            if isinstance(event, FinishedEvent):
                return event.result
            if isinstance(event, ErrorEvent):
                raise event.error
        raise RuntimeError("request stream ended without a result")


@dataclass(eq=False)
class AnswerState:
    """One answer of an understanding request while it grows (its row is running until `finish_reason` is set)."""

    index: int
    stop_watch: StopWatch | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = ""

    def result(self) -> Answer:
        return Answer(list(self.token_ids), self.finish_reason, self.logprobs)


@dataclass(eq=False)
class RequestState:
    """Everything the engine tracks for one request. Rows of a request share one length (no padding)."""

    params: Params
    handle: RequestHandle
    submitted_at: float = field(default_factory=time.perf_counter)
    id: str = field(default_factory=new_request_id)
    status: Status = Status.WAITING
    prompts: list[PromptBlocks] = field(default_factory=list)  # understanding: one; generation: cond, uncond
    # KV rows (the block manager's): one per prompt from admission to the end of its prefill, then one per row
    # (understanding: row k = live[k]; generation: parallel_size conditional rows, then the unconditional ones)
    tables: list[BlockTable] = field(default_factory=list)
    cached_tokens: int = 0  # prompt positions reused from the prefix cache
    next_tokens: list[int] = field(default_factory=list)  # next input per image (generation) or per running answer
    answers: list[AnswerState] = field(default_factory=list)  # understanding: all answers, finished or not
    live: list[AnswerState] = field(default_factory=list)  # understanding: the running answers, row k = tables[k]
    image_tokens: np.ndarray | None = None  # [parallel_size, image_tokens]
    steps_done: int = 0
    timings: Timings = field(default_factory=Timings)
    prefill_started: float = 0.0
    first_token_at: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.params.seed)
        self.preview_steps: frozenset[int] = frozenset()
        if isinstance(self.params, GenerateParams):
            self.image_tokens = np.zeros((self.params.parallel_size, self.params.image_tokens), np.int64)
            if self.handle.stream:  # nobody would see the previews of a request that does not stream
                self.preview_steps = frozenset(self.params.preview_steps)
        else:
            watch = self.params.stop_watch
            logprobs = self.params.logprobs is not None
            self.answers = [AnswerState(i, watch() if watch else None, logprobs=[] if logprobs else None)
                            for i in range(self.params.n)]
            self.live = list(self.answers)
        timeout = self.params.timeout_s
        self.deadline = self.submitted_at + timeout if timeout else float("inf")

    @property
    def kind(self) -> Kind:
        return self.params.kind

    @property
    def rows(self) -> int:
        """Rows it needs (waiting) or holds (running: answers that ended have given theirs back)."""
        if self.status is Status.RUNNING and self.kind is Kind.UNDERSTAND:
            return len(self.live)
        return self.params.rows

    @property
    def understand(self) -> UnderstandParams:
        assert isinstance(self.params, UnderstandParams)
        return self.params

    @property
    def generate(self) -> GenerateParams:
        assert isinstance(self.params, GenerateParams)
        return self.params

    def fail(self, error: EngineError) -> None:
        self.status = Status.FINISHED
        self.handle.deliver(ErrorEvent(error))
