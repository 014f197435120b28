"""The engine: one worker thread that owns the model and runs `schedule -> step -> postprocess` in a loop.

The asyncio side calls `submit()` (never blocks on the model) and reads events from the returned handle; results
come back through `loop.call_soon_threadsafe`. A failure while processing one request fails that request only;
the loop itself survives anything but `shutdown()`.

A generation request leaves the loop when its last image token is drawn: its rows are freed at once and its token
grids go to the image decoder (`image_decoder.py`), which on the CPU decodes them on a thread of its own and
answers the request from there. That thread has a thread budget of its own (part of the cores while requests run,
all of them while none does); the engine thread keeps its budget throughout, so a request's tokens never depend on
whether other requests' images are decoding.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import paddle

from model.janus import JanusModel
from model.sampling import choose, distribution, draw, guided_logits, log_probs
from service.engine.block_manager import BlockManager
from service.engine.capacity import CONTEXT_SETTING, ROWS_SETTING, Capacity, KVPool
from service.engine.cpu_threads import thread_budget
from service.engine.errors import (
    EngineError,
    EngineStopped,
    InvalidRequest,
    ModelFailure,
    RequestCancelled,
    RequestTimeout,
)
from service.engine.feature_cache import FeatureCache
from service.engine.image_decoder import DecodeJob, DecodeKind, ImageDecoder
from service.engine.observer import EngineObserver, NullObserver
from service.engine.previews import grey_undrawn, partial_tokens
from service.engine.request import AnswerState, RequestHandle, RequestState, Status
from service.engine.runner import Runner
from service.engine.scheduler import Scheduler
from service.engine.types import (
    FinishedEvent,
    GenerateParams,
    GenerateResult,
    Kind,
    Params,
    PreviewEvent,
    ProgressEvent,
    Timings,
    TokenEvent,
    TokenLogprob,
    UnderstandResult,
)

log = logging.getLogger(__name__)


MiB = 1024 * 1024


@dataclass(slots=True)
class EngineConfig:
    max_rows: int = 32  # rows decoding at once (a generation image takes 2, 1 with cfg_weight 1)
    max_seq_len: int | None = None  # per-request limit: prompt + new tokens (None: the model's context)
    kv_cache_mb: int = 8192  # KV pool budget in MiB (never more blocks than max_rows rows of max_seq_len need)
    kv_blocks: int | None = None  # the pool in blocks, overriding kv_cache_mb (tests)
    block_size: int = 16  # positions per KV block
    prefix_cache: bool = True  # reuse the KV blocks of known prompt prefixes across requests
    feature_cache_mb: int = 256  # aligned vision features of recent images, by pixel hash (0: off)
    max_waiting: int = 64  # queued requests beyond the running ones
    default_timeout_s: float = 600.0
    progress_every: int = 16  # generation progress event cadence, in steps
    prefill_batch: int = 4  # understanding prompts prefilled together at most
    prefill_tokens: int = 4096  # and at most this many (padded) prompt tokens in one prefill
    # CPU: threads of the image decoder while requests run (the engine thread keeps OMP_NUM_THREADS; with no
    # request running the decoder takes that many too); 0 = half, at least one.
    decode_threads: int = 0
    images_per_decode: int = 1  # CPU: images per VQ-decoder call (the GPU decodes a request's images at once)

    def __post_init__(self) -> None:
        for name in ("max_rows", "progress_every", "images_per_decode", "kv_cache_mb", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_seq_len", "kv_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_waiting < 0 or self.default_timeout_s <= 0 or self.decode_threads < 0:
            raise ValueError("max_waiting and decode_threads must be >= 0 and default_timeout_s > 0")
        if self.feature_cache_mb < 0:
            raise ValueError("feature_cache_mb must be >= 0")


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
        self.blocks = BlockManager(self._pool_blocks(), config.block_size, config.prefix_cache, self.features)
        self.scheduler = Scheduler(config.max_rows, config.max_waiting, blocks=self.blocks)
        self.capacity = Capacity(self.max_seq_len, config.max_rows,
                                 KVPool(self.blocks.num_blocks, config.block_size, self.block_bytes))
        self.runner: Runner | None = None
        self.images: ImageDecoder | None = None  # made in the worker thread, with the runner
        self.decode_threads = 0  # the image decoder's thread budget, once it is made
        self.fault_hook: Callable[[RequestState], None] | None = None  # lets tests fail one request on purpose
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None
        self._completed: list[RequestState] = []  # generation requests whose last token came this step
        self._previews_due: list[tuple[RequestState, int]] = []  # (request, steps done) to preview after this step

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
        while (self.scheduler.has_work() or not self._images_idle()) and time.monotonic() < deadline and self.alive:
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
        self._validate(params)
        if params.timeout_s is None:
            params.timeout_s = self.config.default_timeout_s
        handle = RequestHandle("", asyncio.get_running_loop(), stream)
        request = RequestState(params=params, handle=handle)
        handle.id = request.id
        # a generation request also queues behind the requests whose images wait for the decoder
        queued = (self.images.pending(queued_only=True) if self.images is not None and params.kind is Kind.GENERATE
                  else 0)
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

    def _pool_blocks(self) -> int:
        """Blocks in the KV pool: the budget's worth, but never more than max_rows rows of max_seq_len need."""
        if self.config.kv_blocks is not None:
            return self.config.kv_blocks
        budget = self.config.kv_cache_mb * MiB // self.block_bytes
        ceiling = self.config.max_rows * -(-self.max_seq_len // self.config.block_size)
        return max(1, min(budget, ceiling))

    def _validate(self, params: Params) -> None:
        """The preprocessor refuses what does not fit in the client's terms; this guards the engine itself."""
        prompt = len(params.prompt_ids)
        prompts = 2 if isinstance(params, GenerateParams) and params.guided else 1
        short = self.capacity.shortfall(prompt, params.max_len - prompt, params.rows, prompts)
        if short is not None and short.setting == ROWS_SETTING:
            raise InvalidRequest(f"the request needs {short.needed} rows but the server runs at most {short.limit}: "
                                 f"{short.advice}")
        if short is not None and short.setting == CONTEXT_SETTING:
            raise InvalidRequest(f"the request needs {short.needed} tokens per row (the prompt alone is {prompt}) but "
                                 f"the server's context is {short.limit}: {short.advice}")
        if short is not None:
            raise InvalidRequest(f"the request needs up to {short.needed} MiB of KV cache but the whole cache is "
                                 f"{short.limit} MiB: {short.advice}")

    # worker thread

    def _main(self) -> None:
        try:
            paddle.set_grad_enabled(False)  # per thread: this is the thread that runs the model
            self.runner = Runner(self.model, self.blocks.num_blocks, self.config.block_size,
                                 self.features)
            self.runner.warmup()
            self.images = self._image_decoder(self.runner)
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
                    self._fail(request, ModelFailure("internal error while running the batch"))
        for request in list(self.scheduler.running) + self.scheduler.drain_waiting():
            self._fail(request, EngineStopped("the server shut down before the request finished"))
        self.images.stop(EngineStopped("the server shut down before the images were decoded"), wait_s=30)

    def _image_decoder(self, runner: Runner) -> ImageDecoder:
        """On the CPU a thread of its own with part of the cores beside running requests and all of them while no
        request runs (its pixels do not depend on the count); on a GPU inline (a few ms per image)."""
        if not runner.place.is_cpu_place():
            self.decode_threads = thread_budget()
            return ImageDecoder(runner, images_per_call=16, threaded=False)  # a whole request (parallel_size <= 16)
        cores = thread_budget()
        self.decode_threads = decode_threads = self.config.decode_threads or max(1, cores // 2)
        alone = max(cores, decode_threads)

        def threads() -> int:  # asked by the decoder thread before each call
            return decode_threads if self.scheduler.has_work() else alone

        return ImageDecoder(runner, self.config.images_per_decode, threaded=True,
                            prepare_thread=lambda: paddle.set_grad_enabled(False), threads=threads)

    def _step(self) -> bool:
        """One iteration. Returns False when there was nothing to do."""
        now = time.perf_counter()
        for request in self.scheduler.drop_abandoned(now):
            if request.handle.cancelled:
                self._fail(request, RequestCancelled("the client went away"))
            else:
                self._fail(request, RequestTimeout(f"the request did not finish within {request.params.timeout_s} s"))
        runner = self._runner()
        admitted = self.scheduler.admit()
        if not self.scheduler.running:
            self._report_queue()
            return False
        started = time.perf_counter()
        for group in self._prefill_groups(admitted):
            self._prefill(group)
        # the first token of each new request came out of its prefill
        text_tokens = sum(r.params.rows for r in admitted if r.kind is Kind.UNDERSTAND and r.first_token_at)
        image_tokens = sum(r.generate.parallel_size for r in admitted if r.kind is Kind.GENERATE and r.first_token_at)
        rows = 0
        # Everything running decodes together, the just-prefilled included (their first token is already chosen).
        decoding = list(self.scheduler.running)
        if decoding:
            rows = sum(r.rows for r in decoding)
            self.scheduler.prepare_step(decoding)
            logits = runner.decode(decoding)
            self.scheduler.stepped(decoding)
            for request in decoding:
                if request.kind is Kind.UNDERSTAND:
                    text_tokens += request.rows
                    self._guarded(request, self._on_text, logits.text[request.id])
                else:
                    self._guarded(request, self._on_image, logits.image[request.id])
                    image_tokens += request.generate.parallel_size
        self._finish_images()
        self._send_previews()
        self.observer.on_step(rows, time.perf_counter() - started, text_tokens, image_tokens)
        self._report_queue()
        return True

    def _prefill_groups(self, admitted: list[RequestState]) -> list[list[RequestState]]:
        """Understanding prompts are prefilled together, a few at a time (the prompt mask is batch x T x T);
        a generation request already batches its own rows."""
        groups: list[list[RequestState]] = []
        text: list[RequestState] = []
        for request in admitted:
            if request.kind is Kind.GENERATE:
                groups.append([request])
                continue
            if text and (len(text) == self.config.prefill_batch or
                         max(len(r.params.prompt_ids) for r in [*text, request]) * (len(text) + 1)
                         > self.config.prefill_tokens):
                groups.append(text)
                text = []
            text.append(request)
        return groups + ([text] if text else [])

    def _prefill(self, group: list[RequestState]) -> None:
        started = time.perf_counter()
        for request in group:
            request.prefill_started = started
            request.timings.queued_s = started - request.submitted_at
        try:
            if group[0].kind is Kind.GENERATE:
                first_logits = [self._runner().prefill(group[0])]
            else:
                first_logits = self._runner().prefill_understand(group)
        except Exception as err:  # noqa: BLE001 - fails these requests only
            if len(group) > 1:  # find the one that breaks: alone, each fails or succeeds on its own
                for request in group:
                    self._prefill([request])
                return
            log.exception("prefill failed for %s", group[0].id)
            self._fail(group[0], ModelFailure(f"prefill failed: {err}"))
            return
        now = time.perf_counter()
        for request in group:
            self._runner().copy_blocks(self.scheduler.prefilled(request))
        for request, logits in zip(group, first_logits, strict=True):
            request.timings.prefill_s = now - started
            request.first_token_at = now
            handler = self._on_text if request.kind is Kind.UNDERSTAND else self._on_image
            self._guarded(request, handler, logits)

    def _guarded(self, request: RequestState, handler: Callable[[RequestState, np.ndarray], None],
                 logits: np.ndarray) -> None:
        try:
            if self.fault_hook is not None:
                self.fault_hook(request)
            handler(request, logits)
        except Exception as err:  # noqa: BLE001 - fails this request only
            log.exception("processing failed for %s", request.id)
            self._fail(request, ModelFailure(f"processing failed: {err}"))

    # postprocess

    def _on_text(self, request: RequestState, logits: np.ndarray) -> None:
        """logits [running answers, V]: one token for each running answer; answers that end give their row back."""
        params = request.understand
        if params.logprobs is None:
            chosen = choose(logits, params.temperature, request.rng, params.top_p)
            logprobs = None
        else:
            probs = distribution(logits, params.temperature, params.top_p)
            chosen = logits.argmax(axis=-1) if probs is None else draw(probs, request.rng)
            logprobs = log_probs(logits, probs)
        ended: list[int] = []
        for row, (answer, token) in enumerate(zip(request.live, chosen.tolist(), strict=True)):
            if reason := self._add_token(answer, token, None if logprobs is None else logprobs[row], request):
                answer.finish_reason = reason
                ended.append(row)
        if len(ended) == len(request.live):
            self._finish_text(request)
            return
        for row in reversed(ended):
            self.scheduler.release_row(request, row)
            request.live.pop(row)
        request.next_tokens = [answer.token_ids[-1] for answer in request.live]

    def _add_token(self, answer: AnswerState, token: int, logprobs: np.ndarray | None,
                   request: RequestState) -> str:
        """Record an answer's next token; returns why the answer ends with it ("" while it goes on)."""
        params = request.understand
        if token in params.stop_ids:
            return "stop"
        answer.token_ids.append(token)
        entry = None
        if logprobs is not None and answer.logprobs is not None:
            entry = _token_logprob(logprobs, token, params.logprobs or 0)
            answer.logprobs.append(entry)
        request.handle.deliver(TokenEvent(token, answer.index, entry))
        if answer.stop_watch is not None and answer.stop_watch.push(token):
            return "stop"
        if len(answer.token_ids) >= params.max_new_tokens:
            return "length"
        return ""

    def _on_image(self, request: RequestState, logits: np.ndarray) -> None:
        params = request.generate
        P = params.parallel_size
        mixed = guided_logits(logits[:P], logits[P:], params.cfg_weight) if params.guided else logits
        chosen = choose(mixed, params.temperature, request.rng)
        assert request.image_tokens is not None
        request.image_tokens[:, request.steps_done] = chosen
        request.steps_done += 1
        request.next_tokens = [int(t) for t in chosen]
        done = request.steps_done == params.image_tokens
        if done or request.steps_done % self.config.progress_every == 0:
            request.handle.deliver(ProgressEvent(request.steps_done, params.image_tokens))
        if done:
            self._release(request)
            self._completed.append(request)
        elif request.steps_done in request.preview_steps:
            self._previews_due.append((request, request.steps_done))

    def _finish_text(self, request: RequestState) -> None:
        self._release(request)
        result = UnderstandResult([answer.result() for answer in request.answers], len(request.params.prompt_ids),
                                  self._timings(request), request.cached_tokens)
        request.handle.deliver(FinishedEvent(result))

    def _finish_images(self) -> None:
        """Hand the token grids of generation requests that completed this step to the image decoder, which
        answers them (the engine no longer touches them)."""
        done, self._completed = self._completed, []
        for request in done:
            request.timings.decode_s = time.perf_counter() - request.first_token_at
            assert request.image_tokens is not None and self.images is not None
            self.images.submit(DecodeJob(request, request.image_tokens,
                                         on_images=lambda images, r=request: self._deliver_images(r, images),
                                         on_error=lambda error, r=request: self._fail_images(r, error)))

    # image decoder thread (the request has left the scheduler: only its handle and timings are touched)

    def _deliver_images(self, request: RequestState, images: np.ndarray) -> None:
        request.timings.total_s = time.perf_counter() - request.submitted_at
        assert request.image_tokens is not None
        request.handle.deliver(FinishedEvent(GenerateResult(images, request.image_tokens, request.params.seed,
                                                            request.timings)))

    def _fail_images(self, request: RequestState, error: EngineError) -> None:
        self.observer.on_failure(error.kind)
        request.fail(error)

    def _send_previews(self) -> None:
        """Hand the partial token grids of streamed requests that reached a preview step this step to the image
        decoder, behind every finished request's images. A preview is a courtesy: one that fails, or that a newer
        preview or the final images overtake, is skipped and the request goes on."""
        due, self._previews_due = self._previews_due, []
        grid = self.model.cfg.gen_vision.grid
        for request, steps in due:
            if request.status is not Status.RUNNING:  # failed or cancelled since
                continue
            assert request.image_tokens is not None and self.images is not None
            self.images.submit(DecodeJob(
                request, partial_tokens(request.image_tokens, steps), kind=DecodeKind.PREVIEW,
                on_images=lambda images, r=request, s=steps: r.handle.deliver(
                    PreviewEvent(s, r.generate.image_tokens, grey_undrawn(images, s, grid))),
                on_error=lambda error: None))

    # helpers

    def _timings(self, request: RequestState) -> Timings:
        now = time.perf_counter()
        request.timings.decode_s = now - request.first_token_at if request.first_token_at else 0.0
        request.timings.total_s = now - request.submitted_at
        return request.timings

    def _release(self, request: RequestState) -> None:
        """Free a request's rows and their KV blocks (full ones stay cached for later prompts)."""
        self.scheduler.finish(request)

    def _fail(self, request: RequestState, error: EngineError) -> None:
        self._release(request)
        self.observer.on_failure(error.kind)
        request.fail(error)

    def _images_idle(self) -> bool:
        return self.images is None or self.images.idle

    def _report_queue(self) -> None:
        counts = self.scheduler.counts()
        self.observer.on_queue(counts["waiting"], {"understand": counts["running_understand_rows"],
                                                   "generate": counts["running_generate_rows"]})

    def _runner(self) -> Runner:
        assert self.runner is not None
        return self.runner


def kv_block_bytes(model: JanusModel, block_size: int) -> int:
    """Bytes of one KV block over all layers, keys and values, in the model's dtype."""
    lang = model.cfg.language
    element = 4 if model.dtype == paddle.float32 else 2
    return 2 * lang.num_hidden_layers * lang.num_key_value_heads * lang.head_dim * block_size * element


def _token_logprob(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """logprobs [V] of one row -> the chosen token's value and the `top` likeliest (id, value), likeliest first."""
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = [(int(i), float(logprobs[i])) for i in ids]
    return TokenLogprob(float(logprobs[token]), best)
