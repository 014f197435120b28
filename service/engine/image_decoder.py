"""Image-token grids -> pixels, on a thread of its own, so that the engine keeps stepping while images decode.

On the CPU a VQ decode takes seconds per image; run on the engine thread it would stop every running and waiting
request until it ends. Here a generation request leaves the engine when its last token is drawn (its rows are
already free) and becomes a job for this worker, which owns it from then on: it decodes the job a few images per
call, then hands the images (or the failure) to the job's callbacks, in this thread.

Jobs run by kind, then in arrival order: `FINAL` jobs (a finished request's images, which its answer waits on)
before `PREVIEW` jobs (a partial grid of a request still drawing, for its stream), so previews never delay an answer.
A preview is a courtesy: a newer preview of the same request replaces a queued one, the request's final images
replace its queued or in-flight preview, and a preview of a request that is no longer drawing is dropped. Between
calls the worker checks that the job is still wanted: a cancelled or timed-out request stops there, and `stop()`
fails whatever is queued or in flight.

Before each call the worker asks `threads()` for its thread budget (OpenMP and MKL, `cpu_threads.py`): the engine
gives it every core while no request runs and half of them beside running requests. A thread's budget can only be
set by that thread, so it changes between calls, never within one; the pixels do not depend on it (the decoder's
kernels split their work over output pixels, never a sum: `model/cpu_kernels/conv.c`).

With `threaded=False` (GPU: milliseconds per image, and one device stream either way) jobs run inline, in the
thread that submits them, through the same code.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np

from service.engine.cpu_threads import set_thread_budget
from service.engine.errors import EngineError, ModelFailure, RequestCancelled, RequestTimeout
from service.engine.request import Request, Status

log = logging.getLogger(__name__)

_order = itertools.count()


class DecodeKind(IntEnum):
    """Lower values are decoded first."""

    FINAL = 0  # a finished request's images: its answer waits on them
    PREVIEW = 1  # a partial grid for a progress preview: nobody's answer waits on it


class ImageDecoding(Protocol):
    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [N, image tokens] -> uint8 [N, S, S, 3]."""


@dataclass(eq=False)
class DecodeJob:
    request: Request
    tokens: np.ndarray  # int64 [images, image tokens]
    on_images: Callable[[np.ndarray], None]  # uint8 [images, S, S, 3]; called in the decoding thread
    on_error: Callable[[EngineError], None]  # called in the decoding thread, or in the one that stops the worker
    # (a replaced or dropped preview gets neither call)
    kind: DecodeKind = DecodeKind.FINAL
    order: int = field(default_factory=lambda: next(_order))  # arrival order within a kind
    ended: bool = False  # set once, under the worker's lock: a job's callbacks run exactly once


class ImageDecoder:
    def __init__(self, model: ImageDecoding, images_per_call: int, threaded: bool,
                 prepare_thread: Callable[[], None] = lambda: None, threads: Callable[[], int] | None = None) -> None:
        if images_per_call < 1:
            raise ValueError("images_per_call must be >= 1")
        self.model = model
        self.images_per_call = images_per_call
        self.threaded = threaded
        self._prepare_thread = prepare_thread  # runs first in the worker thread (grad mode)
        # the worker thread's budget for its next call, asked before each one (None, or inline: left as it is)
        self.threads = threads if threaded else None
        self._budget = 0  # the budget set in the worker thread (0: not set yet)
        self._lock = threading.Condition()
        self._queue: list[tuple[int, int, DecodeJob]] = []  # heap by (kind, order)
        self._current: DecodeJob | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> None:
        if self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._main, name="janus-image-decoder", daemon=True)
            self._thread.start()

    def stop(self, error: EngineError, wait_s: float) -> None:
        """Fail every queued and in-flight job with `error`, then let the thread end (it finishes the call it is in,
        at most `wait_s` is waited for it)."""
        with self._lock:
            self._stopping = True
            jobs = [job for *_, job in sorted(self._queue)]
            if self._current is not None:
                jobs.append(self._current)
            self._queue.clear()
            self._lock.notify_all()
        for job in jobs:
            self._end(job, error=error)
        if self._thread is not None:
            self._thread.join(timeout=wait_s)

    # submission (engine thread)

    def submit(self, job: DecodeJob) -> None:
        if not self.threaded:
            self._run(job)
            return
        with self._lock:
            if not self._stopping:
                self._replace_previews(job)
                heapq.heappush(self._queue, (job.kind, job.order, job))
                self._lock.notify()
                return
        self._end(job, error=ModelFailure("the image decoder has stopped"))

    def _replace_previews(self, job: DecodeJob) -> None:
        """Drop the previews of `job`'s request that it makes stale: queued ones for any new job, the one in flight
        too when the final images come. Called with the lock held."""
        stale = [entry for entry in self._queue
                 if entry[2].kind is DecodeKind.PREVIEW and entry[2].request is job.request]
        for entry in stale:
            entry[2].ended = True
            self._queue.remove(entry)
        if stale:
            heapq.heapify(self._queue)
        current = self._current
        if (job.kind is DecodeKind.FINAL and current is not None and current.kind is DecodeKind.PREVIEW
                and current.request is job.request):
            current.ended = True  # the worker stops it after the call it is in

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._queue and self._current is None

    def pending(self, kind: DecodeKind = DecodeKind.FINAL, queued_only: bool = False) -> int:
        """Jobs of this kind being decoded or waiting to be (with `queued_only`, only those waiting)."""
        with self._lock:
            jobs = [job for *_, job in self._queue]
            if self._current is not None and not queued_only:
                jobs.append(self._current)
            return sum(1 for job in jobs if job.kind is kind and not job.ended)

    # worker thread

    def _main(self) -> None:
        try:
            self._prepare_thread()
        except Exception:  # noqa: BLE001 - decoding still works, only with the process-wide settings
            log.exception("preparing the image decoder thread failed")
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception as err:  # noqa: BLE001 - a bug here must not end the thread and strand later jobs
                log.exception("image decoding of %s failed", job.request.id)
                self._end(job, error=ModelFailure(f"image decoding failed: {err}"))
            with self._lock:
                self._current = None
                self._lock.notify_all()

    def _next(self) -> DecodeJob | None:
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            self._current = heapq.heappop(self._queue)[2]
            return self._current

    def _run(self, job: DecodeJob) -> None:
        parts: list[np.ndarray] = []
        for start in range(0, len(job.tokens), self.images_per_call):
            if job.ended:  # failed meanwhile by stop()
                return
            if job.kind is DecodeKind.PREVIEW and job.request.status is Status.FINISHED:
                return  # no longer drawing: finished (its final images are coming) or failed
            unwanted = self._unwanted(job.request)
            if unwanted is not None:
                self._end(job, error=unwanted)
                return
            try:
                self._set_budget()
                parts.append(self.model.decode_images(job.tokens[start:start + self.images_per_call]))
            except Exception as err:  # noqa: BLE001 - fails this request only
                log.exception("image decoding failed for %s", job.request.id)
                self._end(job, error=ModelFailure(f"image decoding failed: {err}"))
                return
        self._end(job, images=np.concatenate(parts))

    def _set_budget(self) -> None:
        if self.threads is None:
            return
        budget = self.threads()
        if budget != self._budget:
            set_thread_budget(budget)
            self._budget = budget

    @staticmethod
    def _unwanted(request: Request) -> EngineError | None:
        if request.handle.cancelled:
            return RequestCancelled("the client went away")
        if time.perf_counter() > request.deadline:
            return RequestTimeout(f"the request did not finish within {request.timeout_s} s")
        return None

    def _end(self, job: DecodeJob, images: np.ndarray | None = None, error: EngineError | None = None) -> None:
        with self._lock:
            if job.ended:
                return
            job.ended = True
        try:
            if images is not None:
                job.on_images(images)
                return
        except Exception as err:  # noqa: BLE001 - the request must still get an answer
            log.exception("delivering the images of %s failed", job.request.id)
            error = ModelFailure(f"image delivery failed: {err}")
        assert error is not None
        try:
            job.on_error(error)
        except Exception:  # noqa: BLE001
            log.exception("reporting the failure of %s failed", job.request.id)
