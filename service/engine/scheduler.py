"""What runs in each step, and what a step means for the rows: the plan (a group of prompts to prefill, or one
decode step of every running row) and its postprocessing (tokens appended, ends checked, rows and blocks given
back). With admission (`admission.py`, its base) the one writer of requests and rows; the block manager, the one
owner of KV memory, works for it.

Pure Python: it never touches a tensor. Engine thread only, but for the queue's `add` and `counts`. A step is
`plan = schedule()`, `out = runner.run(plan)`, `postprocess(plan, out)`: the requests admitted together are
prefilled, a few at a time, then every running row decodes once, then the next requests are admitted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from service.engine.admission import Admission
from service.engine.block_manager import BlockManager
from service.engine.errors import EngineError, ModelFailure, RequestTimeout
from service.engine.plan import Plan, StepOutput
from service.engine.postprocess import StepReport, record_answer_tokens, record_image_tokens
from service.engine.request import Request, Row, Status
from service.engine.types import ErrorEvent, FinishedEvent, Kind, TokenLogprob, UnderstandResult

log = logging.getLogger(__name__)


class Scheduler(Admission):
    def __init__(self, max_rows: int, max_waiting: int, clock: Callable[[], float] = time.perf_counter,
                 blocks: BlockManager | None = None, *, prefill_batch: int = 4, prefill_tokens: int = 4096,
                 progress_every: int = 16, on_failure: Callable[[str], None] = lambda kind: None) -> None:
        """blocks: the KV pool's manager (None: one large enough never to bind, for tests of rows alone);
        prefill_batch / prefill_tokens: understanding prompts prefilled together at most, and their (padded)
        tokens; progress_every: generation progress events every this many steps; on_failure: counts a request
        that fails, by kind."""
        super().__init__(max_rows, max_waiting, clock, blocks)
        self.prefill_batch = prefill_batch
        self.prefill_tokens = prefill_tokens
        self.progress_every = progress_every
        self.on_failure = on_failure
        # tests: called once per request per step, before its tokens are recorded (raising fails the request)
        self.fault_hook: Callable[[Request], None] | None = None
        self._prefills: deque[list[Request]] = deque()  # admitted, prompts still to run, in groups
        self._decode_due = False  # every running row decodes once between two admissions

    # plan

    def schedule(self) -> Plan:
        """The next step: the next group of prompts to prefill, else a decode step of every running row (empty when
        nothing runs). Requests are admitted (and expired ones dropped) before the decode step that follows the
        prefills of the requests admitted before."""
        if not self._prefills and not self._decode_due:
            self._drop_expired()
            self._prefills.extend(self._prefill_groups(self.admit()))
        while self._prefills:
            group = [r for r in self._prefills.popleft() if r.status is Status.RUNNING]  # not cancelled since
            if group:
                self._decode_due = True
                for request in group:
                    request.timings.queued_s = time.perf_counter() - request.submitted_at
                return Plan([row for r in group for row in r.rows], [[] for r in group for _ in r.rows], group,
                            self.blocks.take_copies())
        self._decode_due = False
        rows = [row for request in self.running for row in request.rows if request.drawing(row)]
        inputs = [[row.tokens[-1], *row.drafts] for row in rows]
        for row, ids in zip(rows, inputs, strict=True):
            self.blocks.ensure(row.table, row.table.length + len(ids))
        return Plan(rows, inputs, copies=self.blocks.take_copies())

    def _prefill_groups(self, admitted: list[Request]) -> list[list[Request]]:
        """Understanding prompts are prefilled together, a few at a time (the prompt mask is batch x T x T);
        a generation request already batches its own rows."""
        groups: list[list[Request]] = []
        text: list[Request] = []
        for request in admitted:
            if request.kind is Kind.GENERATE:
                groups.append([request])
                continue
            if text and (len(text) == self.prefill_batch or
                         max(len(r.params.prompt_ids) for r in [*text, request]) * (len(text) + 1)
                         > self.prefill_tokens):
                groups.append(text)
                text = []
            text.append(request)
        return groups + ([text] if text else [])

    # postprocess

    def postprocess(self, plan: Plan, out: StepOutput) -> StepReport:
        """Record what the step drew: each row's tokens (its events go out), its length, and the end of answers,
        images and requests. Returns the generation requests whose images are drawn, the previews due, and the
        tokens drawn."""
        if plan.prefill:
            self._prefilled([r for r in plan.prefill if r not in out.failed])
        report = StepReport()
        for request, rows in plan.by_request():
            if request in out.failed:
                self.abort(request, ModelFailure(out.failed[request]))
                continue
            try:
                if self.fault_hook is not None:
                    self.fault_hook(request)
                self._record(request, [plan.rows[i] for i in rows], [plan.inputs[i] for i in rows],
                             [out.tokens[i] for i in rows], [out.logprobs[i] for i in rows], report,
                             [out.logits[i] for i in rows] if out.logits else [])
            except Exception as err:  # noqa: BLE001 - fails this request only
                log.exception("processing failed for %s", request.id)
                self.abort(request, ModelFailure(f"processing failed: {err}"))
        return report

    def _prefilled(self, requests: list[Request]) -> None:
        """The prompts are written: enter their blocks in the prefix table and give each row sharing a prompt its
        own table (full blocks shared, the partly filled last one copied before the next forward)."""
        now = time.perf_counter()
        for request in requests:
            sharing = len(request.rows) // len(request.prompt_rows)
            for first, prompt in zip(range(0, len(request.rows), sharing), request.prompts, strict=True):
                table = request.rows[first].table
                table.length = len(prompt)
                self.blocks.register_prompt(table, prompt)
                for row, fork in zip(request.rows[first + 1:first + sharing], self.blocks.fork(table, sharing - 1),
                                     strict=True):
                    row.table = fork
            request.timings.prefill_s = now - request.submitted_at - request.timings.queued_s
            request.first_token_at = now

    def _record(self, request: Request, rows: list[Row], inputs: list[list[int]], tokens: list[list[int]],
                logprobs: list[list[TokenLogprob]], report: StepReport, logits: list[np.ndarray | None]) -> None:
        """One request's tokens of this step: appended, sent, and the rows cut back to the positions whose tokens
        were kept; rows and requests that end leave. A speculative request's tokens are its verified drafts (from
        `logits`, each row's image logits at the positions it fed)."""
        lengths = [row.table.length for row in rows]
        for row, fed in zip(rows, inputs, strict=True):
            row.table.length += len(fed)
            row.drafts = []  # verified now
        request.timings.forward_passes += 1
        if request.speculation is not None:
            decoded = [x for x in logits if x is not None] if inputs[0] else None  # None: the prefill's tokens
            tokens, count = request.speculation.step(rows, inputs, tokens, decoded, request.rng)
            report.speculation.add(count)
        if request.kind is Kind.GENERATE:
            kept = record_image_tokens(request, rows, tokens, self.progress_every, report)
        else:
            kept = record_answer_tokens(request, rows, tokens, logprobs)
            report.text_tokens += len(rows)
        for row, length, fed, used in zip(rows, lengths, inputs, kept, strict=True):
            if fed and used < len(fed):  # drafts past the first rejected one: their positions are not kept
                self.blocks.truncate(row.table, length + used)
        if request.kind is Kind.GENERATE:
            if request.steps_done == request.generate.image_tokens:
                self.finish(request)
                report.images.append(request)
            return
        ended = [row for row in rows if row.finish_reason]
        if len(ended) == len(request.rows):
            self.finish(request)
            request.handle.deliver(FinishedEvent(UnderstandResult(
                [answer.answer() for answer in request.answers], len(request.params.prompt_ids), request.timings,
                request.cached_tokens)))
            return
        for row in reversed(ended):  # the rows after it move up
            self._free_row(request, row)
            request.rows.remove(row)
            self.used -= 1

    # leaving

    def finish(self, request: Request) -> None:
        """The request leaves: its rows and blocks are freed (full blocks stay cached for later prompts)."""
        running = request.status is Status.RUNNING
        self.leave(request)
        if running:
            for row in request.rows:
                self._free_row(request, row)
        request.status = Status.FINISHED
        now = time.perf_counter()
        request.timings.decode_s = now - request.first_token_at if request.first_token_at else 0.0
        request.timings.total_s = now - request.submitted_at

    def _free_row(self, request: Request, row: Row) -> None:
        """Give a row's blocks back; an understanding row first enters its full blocks (prompt and answer) in the
        prefix table, for a later turn of the conversation."""
        prompt = request.prompts[0]
        if request.kind is Kind.UNDERSTAND and row.table.length >= len(prompt):
            fed = row.tokens[:row.table.length - len(prompt)]  # the last one drawn is not fed yet
            self.blocks.register(row.table, prompt.ids + fed, prompt.images)
        self.blocks.free(row.table)

    def abort(self, request: Request | str, error: EngineError) -> None:
        """End a waiting or running request with an error (given by id: if it is still here)."""
        found = self.find(request) if isinstance(request, str) else request
        if found is None or found.status is Status.FINISHED:
            return
        self.finish(found)
        self.on_failure(error.kind)
        found.handle.deliver(ErrorEvent(error))

    def abort_all(self, error: EngineError) -> None:
        for request in [*self.running, *self.waiting()]:
            self.abort(request, error)

    def _drop_expired(self) -> None:
        now = time.perf_counter()
        for request in [r for r in [*self.running, *self.waiting()] if now > r.deadline]:
            self.abort(request, RequestTimeout(f"the request did not finish within {request.timeout_s} s"))
