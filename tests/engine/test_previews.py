"""Previews of images still being drawn: where they are taken, what they show, and that they change nothing else."""

from __future__ import annotations

import asyncio

import numpy as np

from service.engine.image_decoder import DecodeKind
from service.engine.previews import GREY, grey_undrawn
from service.engine.types import FinishedEvent, GenerateParams, GenerateResult, PreviewEvent, ProgressEvent
from tests.service.helpers import DecodeGate, plain_decode, wait_for_decoder_idle


def _params(previews: int, image_tokens: int = 576) -> GenerateParams:
    return GenerateParams(prompt_ids=[1, 2], pad_id=0, image_tokens=image_tokens, previews=previews)


def test_preview_steps_are_evenly_spaced_strictly_inside_the_drawing():
    assert _params(0).preview_steps == ()
    assert _params(1).preview_steps == (288,)
    assert _params(3).preview_steps == (144, 288, 432)
    assert _params(3, image_tokens=16).preview_steps == (4, 8, 12)
    assert _params(3, image_tokens=2).preview_steps == (1,)  # too few steps: never the last one, never step 0


def test_grey_undrawn_paints_exactly_the_blocks_of_positions_not_yet_drawn():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)  # grid 3, 4 px per position
    images[images == GREY] = 0  # so that a grey pixel can only come from the painting
    for steps in range(10):
        out = grey_undrawn(images.copy(), steps, grid=3)
        for position in range(9):
            r, c = divmod(position, 3)
            block = out[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
            if position < steps:
                np.testing.assert_array_equal(block, images[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4])
            else:
                assert (block == GREY).all(), (steps, position)


def _expected_preview(engine, final_tokens: np.ndarray, steps: int) -> np.ndarray:
    """What the drawing looked like after `steps`: the final grid's first `steps` codes (drawn codes never change),
    the rest a placeholder, decoded by the model itself, then the undrawn blocks painted grey by hand."""
    partial = final_tokens.copy()
    partial[:, steps:] = 0
    images = plain_decode(engine, partial)
    grid = engine.model.cfg.gen_vision.grid
    cell = images.shape[1] // grid
    for position in range(steps, grid * grid):
        r, c = divmod(position, grid)
        images[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = GREY
    return images


def test_streamed_previews_show_the_drawing_so_far_and_change_no_result(make_engine, generate_params,
                                                                        understand_params, tiny_model):
    engine = make_engine(progress_every=4)
    total = tiny_model.cfg.gen_vision.num_tokens
    plain_params = generate_params(seed=4, parallel_size=2)
    neighbour = generate_params(seed=5, parallel_size=1)
    reader = understand_params(seed=6, temperature=0.7)

    async def collect(handle):
        return [e async for e in handle.events()]

    async def alone():
        return [await engine.submit(p).result() for p in (plain_params, neighbour, reader)]

    async def together():
        handles = [engine.submit(generate_params(seed=4, parallel_size=2, previews=3)),
                   engine.submit(neighbour), engine.submit(reader)]
        return await asyncio.gather(*(collect(h) for h in handles))

    solo = asyncio.run(alone())
    # Previews are decoded beside the loop, and one that the drawing overtakes is skipped: to see every one, the
    # engine waits (in the step after a preview step) until the decoder has nothing left to do.
    engine.fault_hook = lambda request: (
        wait_for_decoder_idle(engine) if request.steps_done in request.preview_steps else None)
    events, neighbour_events, reader_events = asyncio.run(together())
    engine.fault_hook = None

    final = events[-1]
    assert isinstance(final, FinishedEvent) and isinstance(final.result, GenerateResult)
    np.testing.assert_array_equal(final.result.tokens, solo[0].tokens)
    np.testing.assert_array_equal(final.result.images, solo[0].images)
    np.testing.assert_array_equal(neighbour_events[-1].result.images, solo[1].images)
    assert reader_events[-1].result.token_ids == solo[2].token_ids

    kinds = [(type(e).__name__, e.steps_done) for e in events[:-1]]
    assert kinds == [("ProgressEvent", 4), ("PreviewEvent", 4), ("ProgressEvent", 8), ("PreviewEvent", 8),
                     ("ProgressEvent", 12), ("PreviewEvent", 12), ("ProgressEvent", 16)]
    for event in events:
        if isinstance(event, PreviewEvent):
            assert event.steps_total == total and event.images.shape == final.result.images.shape
            np.testing.assert_array_equal(event.images, _expected_preview(engine, final.result.tokens,
                                                                          event.steps_done))
    assert not any(isinstance(e, PreviewEvent) for e in neighbour_events)


def test_a_request_that_does_not_stream_decodes_no_previews(make_engine, generate_params):
    engine = make_engine(progress_every=1)
    decoded: list[int] = []
    runner_decode = None

    async def collect():
        nonlocal runner_decode
        runner = engine.runner
        runner_decode = runner.decode_images

        def counting(tokens):
            decoded.append(len(tokens))
            return runner_decode(tokens)

        runner.decode_images = counting
        try:
            return [e async for e in engine.submit(generate_params(seed=1, previews=3), stream=False).events()]
        finally:
            runner.decode_images = runner_decode

    events = asyncio.run(collect())
    assert len(events) == 1 and isinstance(events[0], FinishedEvent)
    assert decoded == [1, 1]  # the final images only, one per call
    assert not any(isinstance(e, ProgressEvent | PreviewEvent) for e in events)



def test_previews_that_the_drawing_overtakes_are_skipped(make_engine, generate_params):
    """While the decoder is busy with another request's images, a streamed request's previews wait behind them; each
    newer preview replaces the queued one, and its final images replace the last: no preview is decoded late."""
    engine = make_engine(progress_every=4)
    gate = DecodeGate(engine)
    blocker, previewed = generate_params(seed=7, parallel_size=1), generate_params(seed=8, parallel_size=1, previews=3)

    async def collect(handle):
        return [e async for e in handle.events()]

    async def scenario():
        try:
            first = engine.submit(blocker)
            assert await asyncio.to_thread(gate.entered.wait, 120)  # the blocker's images hold the decoder
            collecting = asyncio.create_task(collect(engine.submit(previewed)))
            for _ in range(12000):  # until the second request has drawn its last token
                if engine.stats()["decoding"] == 2:
                    break
                await asyncio.sleep(0.01)
            queued_previews = engine.images.pending(DecodeKind.PREVIEW)
        finally:
            gate.release()
        return queued_previews, await first.result(), await collecting

    queued_previews, first, events = asyncio.run(scenario())
    assert queued_previews == 0
    assert isinstance(first, GenerateResult)
    assert isinstance(events[-1], FinishedEvent) and not any(isinstance(e, PreviewEvent) for e in events)
    assert [e.steps_done for e in events if isinstance(e, ProgressEvent)] == [4, 8, 12, 16]
    assert len(gate.calls) == 2  # the two requests' final images, no preview
