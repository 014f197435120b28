"""Image decoding beside the engine loop: other requests keep stepping while a generation's images are decoded, and
a decode failure, a cancellation or a shutdown reaches only the requests whose images are concerned.

A `DecodeGate` holds the VQ decoder inside a call, so "these images are being decoded" is established, not raced.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from service.engine import Engine, EngineConfig, RequestHandle
from service.engine.cpu_threads import thread_budget
from service.engine.errors import EngineStopped, ModelFailure, Overloaded, RequestCancelled
from service.engine.types import GenerateParams, GenerateResult, Kind, UnderstandParams, UnderstandResult
from tests.engine.test_engine import _reference_generate, _reference_understand
from tests.service.helpers import DecodeGate, plain_decode

WAIT_S = 120  # only keeps a broken engine from hanging the suite


class StepRecorder:
    """An engine observer that counts steps and failures."""

    def __init__(self) -> None:
        self.steps = 0
        self.failures: list[str] = []

    def on_step(self, batch_rows: int, seconds: float, text_tokens: int, image_tokens: int) -> None:
        self.steps += 1

    def on_queue(self, waiting: int, running_rows: dict[str, int]) -> None:
        pass

    def on_failure(self, kind: str) -> None:
        self.failures.append(kind)


async def _wait(event: threading.Event, what: str) -> None:
    if not await asyncio.to_thread(event.wait, WAIT_S):
        raise AssertionError(f"gave up waiting for: {what}")


async def _until(condition, what: str) -> None:
    for _ in range(WAIT_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for: {what}")


async def _admitted_together(engine, hold_with, batch) -> list:
    """Submit `batch` while the engine is held inside a step of `hold_with`: the next step admits all of it at once,
    so requests of equal length also draw their last tokens in one step."""
    release, held = threading.Event(), threading.Event()

    def hold(request) -> None:
        if not release.is_set():
            held.set()
            release.wait()

    engine.fault_hook = hold
    first = engine.submit(hold_with)
    await _wait(held, "the engine to hold")
    handles = [engine.submit(params) for params in batch]
    assert engine.stats()["waiting"] == len(batch)
    release.set()
    engine.fault_hook = None
    await first.result()
    return await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)


def _record_submissions(engine, recorder: StepRecorder) -> list[tuple[str, int]]:
    """(request id, steps completed before it) for every job the engine hands to the image decoder."""
    seen: list[tuple[str, int]] = []
    submit = engine.images.submit

    def recording(job) -> None:
        seen.append((job.request.id, recorder.steps))
        submit(job)

    engine.images.submit = recording
    return seen


def test_an_understanding_request_finishes_while_a_generations_images_decode(
        make_engine, generate_params, understand_params, tiny_model):
    engine = make_engine()
    gate = DecodeGate(engine)
    generation = generate_params(seed=3, parallel_size=2)
    question = understand_params(seed=4, max_new_tokens=6)

    async def scenario():
        try:
            images = engine.submit(generation)
            await _wait(gate.entered, "the generation's images to start decoding")
            during_decode = engine.stats()
            # submitted after the generation's last token: it must be answered before that decoding ends
            answer = await asyncio.wait_for(engine.submit(question).result(), WAIT_S)
            still_decoding = engine.stats()["decoding"]
        finally:
            gate.release()
        return answer, await images.result(), during_decode, still_decoding

    answer, result, during_decode, still_decoding = asyncio.run(scenario())
    assert isinstance(answer, UnderstandResult)
    assert answer.token_ids == _reference_understand(tiny_model, question)
    assert still_decoding == 1
    assert during_decode["free_rows"] == 16 and during_decode["decoding"] == 1  # its rows left with its last token
    assert gate.threads[0] != "janus-engine"
    assert isinstance(result, GenerateResult)
    np.testing.assert_array_equal(result.tokens, _reference_generate(tiny_model, generation))
    np.testing.assert_array_equal(result.images, plain_decode(engine, result.tokens))


def test_generations_finishing_in_one_step_all_get_their_images(
        make_engine, generate_params, understand_params, tiny_model):
    engine = make_engine()
    recorder = StepRecorder()
    engine.observer = recorder
    submitted = _record_submissions(engine, recorder)
    batch = [generate_params(seed=11, parallel_size=1), generate_params(seed=12, parallel_size=2, cfg_weight=1.0),
             generate_params(seed=13, parallel_size=3, temperature=0.0)]
    results = asyncio.run(_admitted_together(engine, understand_params(seed=1, max_new_tokens=2), batch))
    assert len(submitted) == 3 and len({steps for _, steps in submitted}) == 1  # all left in the same step
    for params, result in zip(batch, results, strict=True):
        assert isinstance(result, GenerateResult), result
        np.testing.assert_array_equal(result.tokens, _reference_generate(tiny_model, params))
        assert result.images.shape[0] == params.parallel_size
        np.testing.assert_array_equal(result.images, plain_decode(engine, result.tokens))


@pytest.mark.parametrize("images_per_decode", [1, 4])
def test_a_failed_decode_fails_only_its_request(make_engine, generate_params, understand_params, tiny_model,
                                                images_per_decode):
    engine = make_engine(images_per_decode=images_per_decode)
    recorder = StepRecorder()
    engine.observer = recorder
    victim = generate_params(seed=22, parallel_size=2)
    victim_rows = _reference_generate(tiny_model, victim)
    gate = DecodeGate(engine, fails=lambda tokens: any((victim_rows == row).all(axis=1).any() for row in tokens))
    gate.release()
    batch = [generate_params(seed=21, parallel_size=1), victim, generate_params(seed=23, parallel_size=3)]
    results = asyncio.run(_admitted_together(engine, understand_params(seed=2, max_new_tokens=2), batch))
    assert isinstance(results[1], ModelFailure) and "image decoding failed" in str(results[1])
    for params, result in ((batch[0], results[0]), (batch[2], results[2])):
        assert isinstance(result, GenerateResult), result
        np.testing.assert_array_equal(result.tokens, _reference_generate(tiny_model, params))
        np.testing.assert_array_equal(result.images, plain_decode(engine, result.tokens))
    assert recorder.failures == ["model"]
    assert engine.stats()["decoding"] == 0 and engine.images.idle
    # and the engine still serves, images included

    async def again():
        return await engine.submit(generate_params(seed=24)).result()

    assert isinstance(asyncio.run(again()), GenerateResult)


def test_requests_cancelled_while_their_images_decode_end_as_cancelled(make_engine, generate_params, tiny_model):
    engine = make_engine()
    recorder = StepRecorder()
    engine.observer = recorder
    gate = DecodeGate(engine)
    first, second, third = (generate_params(seed=s, parallel_size=2) for s in (31, 32, 33))

    async def scenario():
        try:
            in_flight = engine.submit(first)
            await _wait(gate.entered, "the first request's images to start decoding")
            queued, kept = engine.submit(second), engine.submit(third)
            await _until(lambda: engine.stats()["decoding"] == 3, "the others to queue for the decoder")
            in_flight.cancel()
            queued.cancel()
        finally:
            gate.release()
        return await asyncio.gather(in_flight.result(), queued.result(), kept.result(), return_exceptions=True)

    cancelled_in_flight, cancelled_queued, kept = asyncio.run(scenario())
    assert isinstance(cancelled_in_flight, RequestCancelled) and isinstance(cancelled_queued, RequestCancelled)
    assert recorder.failures == ["cancelled", "cancelled"]
    # one call for the first image of the cancelled request (already running), then only the kept request's images
    assert len(gate.calls) == 1 + 2
    np.testing.assert_array_equal(np.concatenate(gate.calls[1:]), kept.tokens)
    np.testing.assert_array_equal(kept.images, plain_decode(engine, kept.tokens))


@dataclass
class DecodingEngine:
    """An engine whose image decoder is held inside its next call (`gate`), and a shutdown to start beside it."""

    engine: Engine
    gate: DecodeGate
    stopped: threading.Event = field(default_factory=threading.Event)  # set once `engine.shutdown` has returned

    async def start_decoding(self, params: GenerateParams) -> RequestHandle:
        """Submit a generation and wait until its images are inside the held decoder call."""
        handle = self.engine.submit(params)
        await _wait(self.gate.entered, "the images to start decoding")
        return handle

    def shut_down_in_background(self, drain_timeout_s: float) -> None:
        def shut_down() -> None:
            self.engine.shutdown(drain_timeout_s=drain_timeout_s)
            self.stopped.set()

        threading.Thread(target=shut_down).start()


@pytest.fixture
def decoding_engine(make_engine) -> DecodingEngine:
    engine = make_engine()
    return DecodingEngine(engine, DecodeGate(engine))


def test_shutdown_waits_for_images_being_decoded(decoding_engine, generate_params, tiny_model):
    engine, gate = decoding_engine.engine, decoding_engine.gate

    async def scenario():
        try:
            handle = await decoding_engine.start_decoding(generate_params(seed=41, parallel_size=2))
            decoding_engine.shut_down_in_background(drain_timeout_s=WAIT_S)
            await _until(lambda: not engine.accepting, "the shutdown to begin")
            draining = not decoding_engine.stopped.is_set()  # the decoder is held: the drain cannot have ended
        finally:
            gate.release()
        return draining, await handle.result()

    draining, result = asyncio.run(scenario())
    assert draining
    assert isinstance(result, GenerateResult)
    np.testing.assert_array_equal(result.images, plain_decode(engine, result.tokens))
    assert decoding_engine.stopped.wait(WAIT_S)


def test_shutdown_past_the_drain_time_fails_the_images_in_flight_and_queued(decoding_engine, generate_params):
    engine, gate = decoding_engine.engine, decoding_engine.gate

    async def scenario():
        try:
            in_flight = await decoding_engine.start_decoding(generate_params(seed=51, parallel_size=2))
            queued = engine.submit(generate_params(seed=52))
            await _until(lambda: engine.stats()["decoding"] == 2, "the second request to queue for the decoder")
            decoding_engine.shut_down_in_background(drain_timeout_s=0)
            # both answered while the decoder is still held inside its call
            return await asyncio.gather(in_flight.result(), queued.result(), return_exceptions=True)
        finally:
            gate.release()

    results = asyncio.run(scenario())
    assert all(isinstance(r, EngineStopped) for r in results), results
    assert decoding_engine.stopped.wait(WAIT_S)
    assert len(gate.calls) == 1  # the decoder stopped after the call it was in


def test_generations_queued_for_the_decoder_count_as_waiting(make_engine, generate_params, understand_params):
    engine = make_engine(max_waiting=0)
    gate = DecodeGate(engine)

    async def scenario():
        try:
            handles = [engine.submit(generate_params(seed=61))]
            await _wait(gate.entered, "the first request's images to start decoding")
            handles.append(engine.submit(generate_params(seed=62)))
            await _until(lambda: engine.stats()["decoding"] == 2, "the second request to queue for the decoder")
            with pytest.raises(Overloaded):  # a third would wait behind the queued one
                engine.submit(generate_params(seed=63))
            answer = await engine.submit(understand_params(seed=64, max_new_tokens=2)).result()  # needs no decoder
        finally:
            gate.release()
        return answer, await asyncio.gather(*(h.result() for h in handles))

    answer, results = asyncio.run(scenario())
    assert isinstance(answer, UnderstandResult)
    assert all(isinstance(r, GenerateResult) for r in results)


def test_preview_jobs_queue_behind_every_final_one(generate_params):
    """The queue alone, over a decoder that records what it is given: finished grids go first, in arrival order."""
    from service.engine.image_decoder import DecodeJob, DecodeKind, ImageDecoder
    from service.engine.request import Request, RequestHandle

    release, decoded, answered = threading.Event(), [], []

    class Recording:
        def decode_images(self, tokens: np.ndarray) -> np.ndarray:
            release.wait(WAIT_S)
            decoded.append(int(tokens[0, 0]))
            return np.zeros((len(tokens), 2, 2, 3), np.uint8)

    loop = asyncio.new_event_loop()
    try:
        def job(tag: int, kind: DecodeKind) -> DecodeJob:
            request = Request(params=generate_params(seed=tag), handle=RequestHandle("r", loop))
            return DecodeJob(request, np.full((1, 4), tag), kind=kind,
                             on_images=lambda images: answered.append(tag), on_error=lambda error: None)

        decoder = ImageDecoder(Recording(), images_per_call=1, threaded=True)
        decoder.start()
        decoder.submit(job(0, DecodeKind.FINAL))  # taken at once; the rest queue behind it
        for tag, kind in [(1, DecodeKind.PREVIEW), (2, DecodeKind.FINAL), (3, DecodeKind.PREVIEW),
                          (4, DecodeKind.FINAL)]:
            decoder.submit(job(tag, kind))
        release.set()
        for _ in range(WAIT_S * 100):
            if decoder.idle:
                break
            threading.Event().wait(0.01)
        decoder.stop(EngineStopped("done"), wait_s=WAIT_S)
    finally:
        loop.close()
    assert decoded == answered == [0, 2, 4, 1, 3]


def test_inline_decoding_answers_before_submit_returns(generate_params):
    """The GPU's mode: the same job code, run in the submitting thread, all of a request's images in one call."""
    from service.engine.image_decoder import DecodeJob, ImageDecoder
    from service.engine.request import Request, RequestHandle

    calls: list[tuple[int, str]] = []
    answered: list[np.ndarray] = []

    class Recording:
        def decode_images(self, tokens: np.ndarray) -> np.ndarray:
            calls.append((len(tokens), threading.current_thread().name))
            return np.zeros((len(tokens), 2, 2, 3), np.uint8)

    loop = asyncio.new_event_loop()
    try:
        request = Request(params=generate_params(parallel_size=3), handle=RequestHandle("r", loop))
        decoder = ImageDecoder(Recording(), images_per_call=16, threaded=False)
        decoder.start()
        decoder.submit(DecodeJob(request, np.zeros((3, 4), np.int64), on_images=answered.append,
                                 on_error=lambda error: None))
    finally:
        loop.close()
    assert calls == [(3, threading.current_thread().name)]
    assert len(answered) == 1 and answered[0].shape[0] == 3 and decoder.idle


@pytest.fixture(scope="module")
def demo_engine():
    """An engine over the demo checkpoint: 576 image tokens and a 384 px VQ decoder, whose pixels (unlike the tiny
    model's 16 px ones) showed the thread count in a few bytes per image."""
    import paddle

    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import demo_checkpoint_dir
    from model.tokenizer import JanusTokenizer

    paddle.set_grad_enabled(False)
    model, _ = load_janus(demo_checkpoint_dir(), cache_dir=False)
    engine = Engine(model, EngineConfig(max_rows=4, max_seq_len=1024, max_waiting=4))
    engine.start()
    engine.warmup()
    yield engine, JanusTokenizer.from_dir(demo_checkpoint_dir())
    engine.shutdown(drain_timeout_s=0)


def test_the_decoder_takes_every_core_while_the_engine_has_nothing_else_to_run(demo_engine):
    engine, tok = demo_engine
    cores = thread_budget()  # the engine thread's budget (OMP_NUM_THREADS), which this thread has too
    if cores < 2:
        pytest.skip("one thread in all: nothing to share")
    budgets: list[int] = []  # the decoder thread's OpenMP budget as each decoder call begins
    called = threading.Event()
    decode = engine.runner.decode_images

    def recording(tokens: np.ndarray) -> np.ndarray:
        budgets.append(thread_budget())
        called.set()
        return decode(tokens)

    engine.runner.decode_images = recording
    image = GenerateParams(prompt_ids=[tok.bos_id, 11, 12, 13, tok.boi_id], pad_id=tok.pad_id,
                           image_tokens=engine.model.cfg.gen_vision.num_tokens, seed=5)
    # outlasts the generation's 576 steps when both start together
    question = UnderstandParams(prompt_ids=[tok.bos_id, 21, 22, 23], pixel_values=None, max_new_tokens=600)

    async def alone() -> GenerateResult:
        return await engine.submit(image).result()

    quiet = asyncio.run(alone())
    assert budgets == [cores]

    budgets.clear()
    called.clear()
    handed_over = threading.Event()  # the generation's grid has gone to the decoder
    submit = engine.images.submit
    engine.images.submit = lambda job: (submit(job), handed_over.set())

    def hold(request) -> None:  # the question stays running until the decoder has begun the generation's image
        if request.kind is Kind.UNDERSTAND and handed_over.is_set() and not called.is_set():
            called.wait(WAIT_S)

    async def beside_a_question() -> tuple[UnderstandResult, GenerateResult]:
        answer = engine.submit(question)
        drawn = engine.submit(image)
        return await answer.result(), await drawn.result()

    engine.fault_hook = hold
    try:
        answer, busy = asyncio.run(beside_a_question())
    finally:
        engine.fault_hook = None
        engine.images.submit = submit
        engine.runner.decode_images = decode
    assert len(answer.token_ids) == 600  # it was running all along
    assert budgets == [engine.decode_threads] and engine.decode_threads < cores
    np.testing.assert_array_equal(busy.tokens, quiet.tokens)
    np.testing.assert_array_equal(busy.images, quiet.images)  # the same bytes with either budget
