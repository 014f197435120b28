"""The scheduler's record of one request's new tokens: appended to its rows, sent to its client, the ends found.

Called by the scheduler only (`Scheduler.postprocess`), which then gives back the rows and requests that ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.request import Request, Row
from service.engine.speculative import StepCount
from service.engine.types import ProgressEvent, TokenEvent, TokenLogprob, UnderstandParams


@dataclass(slots=True)
class StepReport:
    """What a step leaves for the engine to pass on."""

    images: list[Request] = field(default_factory=list)  # generations whose last token came: images to decode
    previews: list[tuple[Request, int]] = field(default_factory=list)  # (request, steps done): drawings to preview
    text_tokens: int = 0
    image_tokens: int = 0
    speculation: StepCount = field(default_factory=StepCount)  # the drafts of speculative generations


def record_answer_tokens(request: Request, rows: list[Row], tokens: list[list[int]],
                         logprobs: list[list[TokenLogprob]]) -> list[int]:
    """Each answer row's tokens in order, until one ends it (`finish_reason` set). Returns how many of each row's
    tokens were taken (those after an end are dropped)."""
    taken = []
    for row, drawn, entries in zip(rows, tokens, logprobs, strict=True):
        count = 0
        for token, entry in zip(drawn, entries or [None] * len(drawn), strict=True):
            count += 1
            if reason := _add_answer_token(request, row, token, entry):
                row.finish_reason = reason
                break
        taken.append(count)
    return taken


def _add_answer_token(request: Request, row: Row, token: int, entry: TokenLogprob | None) -> str:
    """Record an answer's next token; returns why the answer ends with it ("" while it goes on)."""
    params: UnderstandParams = request.understand
    if token in params.stop_ids:
        return "stop"
    row.tokens.append(token)
    if entry is not None and row.logprobs is not None:
        row.logprobs.append(entry)
    text, stopped = row.text.push(token) if row.text is not None else ("", False)
    request.handle.deliver(TokenEvent(token, row.index, entry if row.logprobs is not None else None, text))
    if stopped:
        return "stop"
    if len(row.tokens) >= params.max_new_tokens:
        return "length"
    return ""


def record_image_tokens(request: Request, rows: list[Row], tokens: list[list[int]], progress_every: int,
                        report: StepReport) -> list[int]:
    """Every row of a generation takes its image's tokens (plainly all images advance together; drawn
    speculatively, each as far as its drafts are kept, and the request's steps are those of its slowest image);
    progress goes out every `progress_every` steps and at the last one, and preview points are noted. Returns the
    tokens taken per row."""
    params = request.generate
    for row, drawn in zip(rows, tokens, strict=True):
        row.tokens.extend(drawn)
    before = request.steps_done
    request.steps_done = min(len(row.tokens) for row in request.rows)
    for steps_done in range(before + 1, request.steps_done + 1):
        last = steps_done == params.image_tokens
        if last or steps_done % progress_every == 0:
            request.handle.deliver(ProgressEvent(steps_done, params.image_tokens))
        if not last and steps_done in request.preview_steps:
            report.previews.append((request, steps_done))
    images = len(rows) // 2 if params.guided else len(rows)  # the conditional rows come first
    report.image_tokens += sum(len(drawn) for drawn in tokens[:images])
    return [len(drawn) for drawn in tokens]
