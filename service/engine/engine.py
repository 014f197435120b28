"""The engine: one worker thread that owns the model and runs its steps, `plan = scheduler.schedule()`,
`out = runner.run(plan)`, `scheduler.postprocess(plan, out)`, in a loop.

The asyncio side calls `submit()` (never blocks on the model) and reads events from the returned handle; results
come back through `loop.call_soon_threadsafe`. Requests and rows are the scheduler's alone: what other threads have
to say (a client that cancels, an image decode that fails) is posted to the engine thread, which applies it before
its next step. A failure while processing one request fails that request only; the loop itself survives anything
but `shutdown()`.

A generation request leaves the loop when its last image token is drawn: its rows are freed at once and its token
grids go to the image decoder (`image_decoder.py`), which on the CPU decodes them on a thread of its own and
answers the request from there. That thread has a thread budget of its own (part of the cores while requests run,
all of them while none does); the engine thread keeps its budget throughout, so a request's tokens never depend on
whether other requests' images are decoding.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

import paddle

from model.janus import JanusModel
from service.engine.block_manager import BlockManager
from service.engine.capacity import Capacity, KVPool
from service.engine.config import EngineConfig, MiB, kv_block_bytes
from service.engine.errors import EngineError, EngineStopped, InvalidRequest, ModelFailure, RequestCancelled
from service.engine.feature_cache import FeatureCache
from service.engine.image_decoder import ImageDecoder
from service.engine.image_jobs import final_images, image_decoder, preview
from service.engine.observer import EngineObserver, NullObserver
from service.engine.request import Request, RequestHandle, Status, new_request_id
from service.engine.runner import Runner
from service.engine.scheduler import Scheduler
from service.engine.speculative import speculation_for
from service.engine.types import ErrorEvent, GenerateParams, Params

log = logging.getLogger(__name__)



class Engine:
    def __init__(self, model: JanusModel, config: EngineConfig, observer: EngineObserver | None = None) -> None:
        limit = model.cfg.language.max_position_embeddings
        self.max_seq_len = config.max_seq_len or limit
        if self.max_seq_len > limit:
            raise ValueError(f"max_seq_len {config.max_seq_len} exceeds the model's context of {limit} tokens")
        self.model = model
        self.config = config
        self.observer = observer or NullObserver()
        self.block_bytes = kv_block_bytes(model, config.block_size)
        # vision features by image hash: the runner fills it; the block manager only asks what it holds
        self.features = FeatureCache(config.feature_cache_mb * MiB)
        blocks = config.pool_blocks(self.block_bytes, self.max_seq_len)
        self.blocks = BlockManager(blocks, config.block_size, config.prefix_cache, self.features)
        self.scheduler = Scheduler(config.max_rows, config.max_waiting, blocks=self.blocks,
                                   prefill_batch=config.prefill_batch, prefill_tokens=config.prefill_tokens,
                                   progress_every=config.progress_every,
                                   on_failure=lambda kind: self.observer.on_failure(kind))
        self.capacity = Capacity(self.max_seq_len, config.max_rows,
                                 KVPool(self.blocks.num_blocks, config.block_size, self.block_bytes))
        self.runner: Runner | None = None
        self.images: ImageDecoder | None = None  # made in the worker thread, with the runner
        self.decode_threads = 0  # the image decoder's thread budget, once it is made
        self._posted: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # run by the engine thread
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    @property
    def fault_hook(self) -> Callable[[Request], None] | None:
        """Tests: called on the engine thread once per request per step, before its tokens are recorded."""
        return self.scheduler.fault_hook

    @fault_hook.setter
    def fault_hook(self, hook: Callable[[Request], None] | None) -> None:
        self.scheduler.fault_hook = hook

    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="janus-engine", daemon=True)
        self._thread.start()

    def warmup(self) -> None:
        """Block until the worker thread has allocated the cache and run every kernel once."""
        self.start()
        while not self._ready.wait(0.1):
            if self._startup_error is not None:
                raise RuntimeError(f"engine failed to start: {self._startup_error}") from self._startup_error
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("engine thread exited during start-up")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.alive

    @property
    def accepting(self) -> bool:
        return self._accepting and self.alive

    def shutdown(self, drain_timeout_s: float) -> None:
        """Stop accepting, let in-flight requests finish within the timeout, fail the rest, stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while ((self.scheduler.has_work() or (self.images is not None and not self.images.idle))
               and time.monotonic() < deadline and self.alive):
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # submission (asyncio side)

    def submit(self, params: Params, stream: bool = True) -> RequestHandle:
        """Queue a request. With stream=False the handle gets only the final event (no tokens, no progress)."""
        if not self.accepting:
            raise EngineStopped("the server is shutting down and accepts no new requests")
        if (refusal := self.capacity.refusal(params)) is not None:  # the API refuses first, in the client's terms
            raise InvalidRequest(refusal.message)
        timeout_s = self.config.default_timeout_s if params.timeout_s is None else params.timeout_s
        handle = RequestHandle(new_request_id(), asyncio.get_running_loop(), stream, on_cancel=self._cancel)
        request = Request(params, handle, timeout_s)
        request.speculation = speculation_for(params, self.config, self.model.cfg.gen_vision.image_token_size)
        # a generation request also queues behind the requests whose images wait for the decoder
        queued = (self.images.pending(queued_only=True) if self.images is not None
                  and isinstance(params, GenerateParams) else 0)
        self.scheduler.add(request, also_queued=queued)  # raises Overloaded
        self._wake.set()
        return handle

    def stats(self) -> dict[str, int]:
        """Queue, rows, KV blocks, and the caches' running totals (read from the asyncio side: a snapshot that may
        be a step old)."""
        blocks, totals = self.blocks, self.blocks.stats
        features = self.runner.features if self.runner is not None else None
        return {**self.scheduler.counts(), "decoding": self.images.pending() if self.images is not None else 0,
                "kv_blocks_used": blocks.used, "kv_blocks_cached": blocks.cached,
                "kv_blocks_free": blocks.num_blocks - blocks.used - blocks.cached,
                "prompt_tokens_computed": totals.computed_tokens, "prompt_tokens_reused": totals.reused_tokens,
                "prefix_lookups": totals.lookups, "prefix_hits": totals.hits, "kv_evictions": totals.evictions,
                "image_cache_hits": features.hits if features else 0,
                "image_cache_misses": features.misses if features else 0}

    def _cancel(self, request_id: str) -> None:
        """A client went away (any thread): the engine thread drops the request before its next step."""
        self._post(partial(self.scheduler.abort, request_id, RequestCancelled("the client went away")))

    def _fail_later(self, request: Request, error: EngineError) -> None:
        """A failure from another thread (the image decoder's, after the request left the scheduler): counted and
        answered on the engine thread."""

        def fail() -> None:
            self.observer.on_failure(error.kind)
            request.handle.deliver(ErrorEvent(error))

        self._post(fail)

    def _post(self, event: Callable[[], None]) -> None:
        self._posted.put(event)
        self._wake.set()

    # worker thread

    def _main(self) -> None:
        try:
            paddle.set_grad_enabled(False)  # per thread: this is the thread that runs the model
            self.runner = Runner(self.model, self.blocks.num_blocks, self.config.block_size, self.features)
            self.runner.warmup()
            self.images, self.decode_threads = image_decoder(self.runner, self.config, busy=self.scheduler.has_work)
            self.images.start()
        except BaseException as err:  # noqa: BLE001 - reported through warmup()
            self._startup_error = err
            log.exception("engine start-up failed")
            return
        self._ready.set()
        log.info("engine ready: KV cache of %d blocks x %d positions (%.1f MiB), up to %d rows at once",
                 self.blocks.num_blocks, self.config.block_size, self.runner.cache.nbytes / MiB,
                 self.config.max_rows)
        while not self._stop.is_set():
            try:
                if not self._step():
                    self._wake.wait(0.05)
                    self._wake.clear()
            except Exception:  # noqa: BLE001 - a bug in one step must not end the service
                log.exception("engine step failed; failing the running requests")
                for request in list(self.scheduler.running):
                    self.scheduler.abort(request, ModelFailure("internal error while running the batch"))
        self.scheduler.abort_all(EngineStopped("the server shut down before the request finished"))
        self.images.stop(EngineStopped("the server shut down before the images were decoded"), wait_s=30)
        self._apply_posted()

    def _step(self) -> bool:
        """What other threads posted, then one step and its hand-offs. False when there was nothing to run."""
        self._apply_posted()
        plan = self.scheduler.schedule()
        if plan.empty:
            self._report_queue()
            return False
        started = time.perf_counter()
        out = self._runner().run(plan)
        report = self.scheduler.postprocess(plan, out)
        self._decode_images(report.images)
        self._send_previews(report.previews)
        forward_rows = 0 if plan.prefill else len(plan.rows)
        self.observer.on_step(forward_rows, time.perf_counter() - started, report.text_tokens, report.image_tokens)
        if report.speculation.forwards:
            count = report.speculation
            self.observer.on_speculation(count.drafted, count.accepted, count.forwards, count.tokens)
        self._report_queue()
        return True

    def _apply_posted(self) -> None:
        while True:
            try:
                event = self._posted.get_nowait()
            except queue.Empty:
                return
            event()

    # image hand-off

    def _decode_images(self, requests: list[Request]) -> None:
        """Hand the token grids of generation requests that completed this step to the image decoder, which
        answers them (the engine no longer touches them; a failure comes back posted to this thread)."""
        assert self.images is not None
        for request in requests:
            self.images.submit(final_images(request, on_error=partial(self._fail_later, request)))

    def _send_previews(self, due: list[tuple[Request, int]]) -> None:
        """Hand the partial token grids of streamed requests that reached a preview step to the image decoder,
        behind every finished request's images."""
        assert self.images is not None
        for request, steps in due:
            if request.status is Status.RUNNING:  # not failed or cancelled since
                self.images.submit(preview(request, steps, self.model.cfg.gen_vision.grid))

    # helpers

    def _report_queue(self) -> None:
        counts = self.scheduler.counts()
        self.observer.on_queue(counts["waiting"], {"understand": counts["running_understand_rows"],
                                                   "generate": counts["running_generate_rows"]})

    def _runner(self) -> Runner:
        assert self.runner is not None
        return self.runner

