"""One request inside the engine: its rows, and the handle the asyncio side holds for it.

A row is one KV row the backbone extends: an answer of an understanding request, or one of the rows of a generated
image (the conditional row and, with guidance, the unconditional one, which is fed the same tokens). Requests and
rows are written by the scheduler only (on the engine thread; `Scheduler.add` fills in the prompts before the
request is queued); the runner reads them. Other threads never write them: the asyncio side cancels through the
handle, which posts the cancellation to the engine thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from service.engine.block_manager import BlockTable
from service.engine.prompt_blocks import PromptBlocks
from service.engine.types import (
    Answer,
    AnswerText,
    ErrorEvent,
    Event,
    FinishedEvent,
    GenerateParams,
    Kind,
    Params,
    PreviewEvent,
    ProgressEvent,
    Result,
    Timings,
    TokenEvent,
    TokenLogprob,
    UnderstandParams,
)

if TYPE_CHECKING:
    from service.engine.speculative import Speculation

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

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, stream: bool = True,
                 on_cancel: Callable[[str], None] | None = None) -> None:
        """on_cancel: tells the engine (called with the request id, in the cancelling thread)."""
        self.id = request_id
        self._loop = loop
        self.stream = stream  # False: only the final event is delivered (no per-token wake-ups, no previews)
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._on_cancel = on_cancel
        self.cancelled = False  # set once, never cleared; the image decoder reads it between calls
        self._done = False

    def deliver(self, event: Event) -> None:
        """Called from the engine thread (or the image decoder's)."""
        if not self.stream and isinstance(event, TokenEvent | ProgressEvent | PreviewEvent):
            return
        # RuntimeError: the event loop is gone (server shut down), so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if not self._done and self._on_cancel is not None:  # an answered request has nothing left to stop
            self._on_cancel(self.id)

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
class Row:
    """One KV row and what it has drawn. Its table holds the positions written; its last token is not fed yet."""

    request: Request
    index: int  # the answer (understanding) or the image (generation) it belongs to
    table: BlockTable = field(default_factory=BlockTable)  # empty until admission (or its prompt's prefill)
    tokens: list[int] = field(default_factory=list)  # drawn so far: an answer's ids, or an image's tokens
    drafts: list[int] = field(default_factory=list)  # tokens to verify after the last one in the next step
    logprobs: list[TokenLogprob] | None = None  # one per token, when the request asks for them
    text: AnswerText | None = None  # the answer's text and stop texts
    finish_reason: str = ""  # set when the answer ends

    @property
    def rng(self) -> np.random.Generator:
        """Its request's generator: the rows of a request draw from it in row order."""
        return self.request.rng

    def answer(self) -> Answer:
        text = self.text.final(self.finish_reason) if self.text is not None else ""
        return Answer(list(self.tokens), self.finish_reason, self.logprobs, text)


@dataclass(eq=False)
class Request:
    """Everything the engine tracks for one request. Rows of a request share one length (no padding)."""

    params: Params
    handle: RequestHandle
    timeout_s: float | None = None  # None: the params' own
    submitted_at: float = field(default_factory=time.perf_counter)
    status: Status = Status.WAITING
    prompts: list[PromptBlocks] = field(default_factory=list)  # understanding: one; generation: cond, uncond
    cached_tokens: int = 0  # prompt positions reused from the prefix cache
    steps_done: int = 0  # generation: image tokens drawn per image
    timings: Timings = field(default_factory=Timings)
    first_token_at: float = 0.0

    def __post_init__(self) -> None:
        if self.timeout_s is None:
            self.timeout_s = self.params.timeout_s
        self.deadline = self.submitted_at + self.timeout_s if self.timeout_s else float("inf")
        self.rng = np.random.default_rng(self.params.seed)
        self.preview_steps: frozenset[int] = frozenset()
        self.speculation: Speculation | None = None  # generation: its drafting state when it decodes speculatively
        if isinstance(self.params, GenerateParams):
            # parallel_size conditional rows, then (guided) as many unconditional ones
            self.rows = [Row(self, i % self.params.parallel_size) for i in range(self.params.rows)]
            self.answers: list[Row] = []
            if self.handle.stream:  # nobody would see the previews of a request that does not stream
                self.preview_steps = frozenset(self.params.preview_steps)
        else:
            text, logprobs = self.params.answer_text, self.params.logprobs is not None
            self.answers = [Row(self, i, logprobs=[] if logprobs else None, text=text() if text else None)
                            for i in range(self.params.n)]
            self.rows = list(self.answers)  # the running ones: an answer that ends gives its row back

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def kind(self) -> Kind:
        return self.params.kind

    @property
    def understand(self) -> UnderstandParams:
        assert isinstance(self.params, UnderstandParams)
        return self.params

    @property
    def generate(self) -> GenerateParams:
        assert isinstance(self.params, GenerateParams)
        return self.params

    @property
    def prompt_rows(self) -> list[Row]:
        """The rows that hold the prompts from admission on (one per prompt); the others share them once prefilled."""
        if self.kind is Kind.GENERATE:
            return self.rows[::self.generate.parallel_size]
        return self.rows[:1]

    @property
    def image_tokens(self) -> np.ndarray:
        """Generation: the images' tokens so far, int64 [parallel_size, steps_done] (an image drawn speculatively
        may be ahead of the others: its first steps_done tokens)."""
        return np.array([row.tokens[:self.steps_done] for row in self.rows[:self.generate.parallel_size]], np.int64)

    def drawing(self, row: Row) -> bool:
        """Whether the row still draws: a generated image with all its tokens waits for the request's others."""
        return self.kind is not Kind.GENERATE or len(row.tokens) < self.generate.image_tokens
