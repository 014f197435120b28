"""The engine's image decoder, and its jobs for a generation request: its final images, and previews of its drawing
so far.

A job runs on the decoder's thread once the request has left the scheduler (final images) or beside its steps
(previews): it reads the request and never writes it. Images go straight to the request's handle; a failure goes to
`on_error`, which the engine posts to its own thread. A preview is a courtesy: one that fails, or that a newer
preview or the final images overtake, is skipped and the request goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import paddle

from service.engine.config import EngineConfig
from service.engine.cpu_threads import thread_budget
from service.engine.errors import EngineError
from service.engine.image_decoder import DecodeJob, DecodeKind, ImageDecoder
from service.engine.previews import grey_undrawn, partial_tokens
from service.engine.request import Request
from service.engine.runner import Runner
from service.engine.types import FinishedEvent, GenerateResult, PreviewEvent


def image_decoder(runner: Runner, config: EngineConfig, busy: Callable[[], bool]) -> tuple[ImageDecoder, int]:
    """The decoder and its thread budget. On the CPU a thread of its own with part of the cores while `busy()`
    (requests run or wait) and all of them otherwise (its pixels do not depend on the count); on a GPU inline (a few
    ms per image)."""
    if not runner.place.is_cpu_place():
        return ImageDecoder(runner, images_per_call=16, threaded=False), thread_budget()  # parallel_size <= 16
    cores = thread_budget()
    decode_threads = config.decode_threads or max(1, cores // 2)
    alone = max(cores, decode_threads)

    def threads() -> int:  # asked by the decoder thread before each call
        return decode_threads if busy() else alone

    decoder = ImageDecoder(runner, config.images_per_decode, threaded=True,
                           prepare_thread=lambda: paddle.set_grad_enabled(False), threads=threads)
    return decoder, decode_threads


def final_images(request: Request, on_error: Callable[[EngineError], None]) -> DecodeJob:
    """The job that answers a request whose image tokens are all drawn."""
    tokens = request.image_tokens

    def answer(images: np.ndarray) -> None:
        timings = dataclasses.replace(request.timings, total_s=time.perf_counter() - request.submitted_at)
        request.handle.deliver(FinishedEvent(GenerateResult(images, tokens, request.params.seed, timings)))

    return DecodeJob(request, tokens, on_images=answer, on_error=on_error)


def preview(request: Request, steps: int, grid: int) -> DecodeJob:
    """The job that shows a streamed request its images after `steps` steps, the positions not drawn yet grey."""
    total = request.generate.image_tokens

    def show(images: np.ndarray) -> None:
        request.handle.deliver(PreviewEvent(steps, total, grey_undrawn(images, steps, grid)))

    return DecodeJob(request, partial_tokens(request.image_tokens[:, :steps], total), kind=DecodeKind.PREVIEW,
                     on_images=show, on_error=lambda error: None)
