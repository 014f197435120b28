"""The engine over the real tiny model: solo results equal the reference loops, and batching changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from model import reference
from service.engine.errors import InvalidRequest, ModelFailure, Overloaded, RequestCancelled, RequestTimeout
from service.engine.types import ErrorEvent, FinishedEvent, GenerateResult, ProgressEvent, TokenEvent, UnderstandResult
from tests.service.helpers import plain_decode


def run(coro):
    return asyncio.run(coro)


async def _results(engine, params_list):
    handles = [engine.submit(p) for p in params_list]
    return await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)


def _reference_understand(model, params) -> list[int]:
    ids = reference.understand(model, np.array(params.prompt_ids), params.pixel_values, params.image_id,
                               params.stop_ids[0], params.max_new_tokens, params.temperature, params.top_p,
                               params.seed)
    return ids[:-1] if ids and ids[-1] in params.stop_ids else ids


def _reference_generate(model, params) -> np.ndarray:
    return reference.generate(model, np.array(params.prompt_ids), params.pad_id, params.parallel_size,
                              params.cfg_weight, params.temperature, params.seed)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_solo_understand_equals_reference_loop(make_engine, understand_params, tiny_model, temperature):
    engine = make_engine()
    params = understand_params(seed=3, temperature=temperature, max_new_tokens=12)
    (result,) = run(_results(engine, [params]))
    assert isinstance(result, UnderstandResult)
    assert result.token_ids == _reference_understand(tiny_model, params)
    assert result.prompt_tokens == len(params.prompt_ids)
    assert result.finish_reason in ("stop", "length")


@pytest.mark.parametrize(("temperature", "cfg_weight"), [(0.0, 5.0), (1.0, 5.0), (1.0, 1.0)])
def test_solo_generate_equals_reference_loop(make_engine, generate_params, tiny_model, temperature, cfg_weight):
    engine = make_engine()
    params = generate_params(seed=5, temperature=temperature, cfg_weight=cfg_weight)
    (result,) = run(_results(engine, [params]))
    assert isinstance(result, GenerateResult)
    np.testing.assert_array_equal(result.tokens, _reference_generate(tiny_model, params))
    size = tiny_model.cfg.gen_vision.image_size
    assert result.images.shape == (2, size, size, 3) and result.images.dtype == np.uint8
    np.testing.assert_array_equal(result.images, plain_decode(engine, result.tokens))


def test_cfg_weight_one_runs_no_unconditional_rows(generate_params):
    assert generate_params(parallel_size=3, cfg_weight=1.0).rows == 3
    assert generate_params(parallel_size=3, cfg_weight=5.0).rows == 6


def test_mixed_load_gives_each_request_its_solo_result(make_engine, understand_params, generate_params):
    load = [understand_params(seed=s, temperature=t, images=s % 3) for s, t in [(1, 0.0), (2, 0.9), (3, 0.0), (4, 0.7)]]
    load += [generate_params(seed=s, temperature=t, parallel_size=p)
             for s, t, p in [(1, 0.0, 2), (2, 1.0, 1), (3, 1.0, 3)]]
    solo_engine = make_engine()
    solo = [run(_results(solo_engine, [p]))[0] for p in load]
    together = run(_results(make_engine(), load))
    for alone, mixed in zip(solo, together, strict=True):
        if isinstance(alone, UnderstandResult):
            assert mixed.token_ids == alone.token_ids
        else:
            np.testing.assert_array_equal(mixed.tokens, alone.tokens)
            np.testing.assert_array_equal(mixed.images, alone.images)


def test_requests_arriving_mid_run_join_and_match_solo(make_engine, understand_params, generate_params):
    first, late = generate_params(seed=8, parallel_size=2), understand_params(seed=9, temperature=0.5)
    solo_engine = make_engine()
    solo_first, solo_late = (run(_results(solo_engine, [p]))[0] for p in (first, late))

    async def staggered(engine):
        handle = engine.submit(first)
        events = handle.events()
        async for event in events:
            if isinstance(event, ProgressEvent):  # the first request is running: now the second arrives
                break
        late_result = await engine.submit(late).result()
        first_result = None
        async for event in events:
            if isinstance(event, FinishedEvent):
                first_result = event.result
        return first_result, late_result

    engine = make_engine(progress_every=2)
    got_first, got_late = run(staggered(engine))
    np.testing.assert_array_equal(got_first.tokens, solo_first.tokens)
    assert got_late.token_ids == solo_late.token_ids


def test_same_seed_same_output_whatever_else_runs(make_engine, generate_params, understand_params):
    engine = make_engine()
    target = generate_params(seed=11, temperature=1.0)
    alone = run(_results(engine, [target]))[0]
    crowd = [generate_params(seed=s) for s in (12, 13)] + [understand_params(seed=14, temperature=1.0)]
    crowded = run(_results(engine, [crowd[0], target, *crowd[1:]]))[1]
    np.testing.assert_array_equal(crowded.tokens, alone.tokens)
    other_seed = run(_results(engine, [generate_params(seed=99, temperature=1.0)]))[0]
    assert not np.array_equal(other_seed.tokens, alone.tokens)


def test_understand_stream_sends_each_token_then_the_result(make_engine, understand_params):
    engine = make_engine()

    async def collect():
        return [e async for e in engine.submit(understand_params(seed=2, max_new_tokens=6)).events()]

    events = run(collect())
    assert isinstance(events[-1], FinishedEvent)
    tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    assert tokens == events[-1].result.token_ids


def test_generate_stream_reports_progress_up_to_all_steps(make_engine, generate_params, tiny_model):
    engine = make_engine(progress_every=4)

    async def collect():
        return [e async for e in engine.submit(generate_params(seed=1)).events()]

    events = run(collect())
    steps = [e.steps_done for e in events if isinstance(e, ProgressEvent)]
    total = tiny_model.cfg.gen_vision.num_tokens
    assert steps == list(range(4, total + 1, 4))
    assert isinstance(events[-1], FinishedEvent)


def test_a_request_that_does_not_stream_gets_only_its_final_event(make_engine, understand_params, generate_params):
    engine = make_engine(progress_every=1)

    async def collect(params):
        return [e async for e in engine.submit(params, stream=False).events()]

    text_events = run(collect(understand_params(seed=2, max_new_tokens=6)))
    image_events = run(collect(generate_params(seed=1)))
    assert len(text_events) == 1 and isinstance(text_events[0], FinishedEvent)
    assert len(text_events[0].result.token_ids) == 6
    assert len(image_events) == 1 and isinstance(image_events[0].result, GenerateResult)


def test_too_many_rows_or_tokens_is_invalid(make_engine, generate_params, understand_params):
    engine = make_engine(max_rows=4, max_seq_len=64)

    async def submit(params):
        engine.submit(params)

    with pytest.raises(InvalidRequest, match="needs 6 rows .*but the server runs at most 4"):
        run(submit(generate_params(parallel_size=3)))
    with pytest.raises(InvalidRequest, match="context is 64"):
        run(submit(understand_params(images=3)))


def test_full_queue_answers_overloaded_with_retry_after(make_engine, generate_params):
    engine = make_engine(max_rows=4, max_waiting=2)

    async def flood():
        handles, refused = [], []
        for seed in range(8):
            try:
                handles.append(engine.submit(generate_params(seed=seed)))
            except Overloaded as err:
                refused.append(err)
        results = await asyncio.gather(*(h.result() for h in handles))
        return results, refused

    results, refused = run(flood())
    assert refused and all(err.retry_after_s >= 1 for err in refused)
    assert len(results) + len(refused) == 8 and all(isinstance(r, GenerateResult) for r in results)


def test_cancelled_request_frees_its_rows(make_engine, generate_params):
    engine = make_engine(max_rows=4, progress_every=1)

    async def cancel_midway():
        handle = engine.submit(generate_params(seed=1, parallel_size=2))
        busy = None
        async for event in handle.events():
            if isinstance(event, ProgressEvent) and busy is None:
                busy = engine.stats()["free_rows"]
                handle.cancel()
            last = event
        return busy, last, engine.stats()

    busy, last, stats = run(cancel_midway())
    assert busy == 0
    assert isinstance(last, ErrorEvent) and isinstance(last.error, RequestCancelled)
    assert stats["free_rows"] == 4
    # and the engine still serves
    assert isinstance(run(_results(engine, [generate_params(seed=2)]))[0], GenerateResult)


def test_request_past_its_timeout_fails_with_timeout(make_engine, generate_params):
    engine = make_engine()
    (result,) = run(_results(engine, [generate_params(timeout_s=1e-4)]))
    assert isinstance(result, RequestTimeout)


def test_failure_in_one_request_fails_only_that_request(make_engine, generate_params, understand_params):
    engine = make_engine()
    victim = generate_params(seed=66)
    engine.fault_hook = lambda request: (_ for _ in ()).throw(RuntimeError("injected"))\
        if request.params is victim else None
    others = [generate_params(seed=1), understand_params(seed=2)]
    results = run(_results(engine, [others[0], victim, others[1]]))
    assert isinstance(results[1], ModelFailure) and "injected" in str(results[1])
    assert isinstance(results[0], GenerateResult) and isinstance(results[2], UnderstandResult)
    assert engine.alive and engine.stats()["free_rows"] == 16


def test_a_prompt_that_breaks_a_batched_prefill_fails_alone(make_engine, understand_params):
    engine = make_engine()
    good = [understand_params(seed=s) for s in (21, 22, 23)]
    solo = [run(_results(engine, [p]))[0] for p in good]
    one = understand_params(seed=24)
    # two images for one placeholder block
    broken = dataclasses.replace(one, pixel_values=np.concatenate([one.pixel_values] * 2), image_hashes=())
    results = run(_results(engine, [good[0], broken, good[1], good[2]]))
    assert isinstance(results[1], ModelFailure) and "prefill failed" in str(results[1])
    assert [r.token_ids for r in (results[0], results[2], results[3])] == [r.token_ids for r in solo]


class _Draws:
    """Stands in for a generator: hands out given numbers (then a filler) as `random(n)` is called."""

    def __init__(self, draws: list[float]) -> None:
        self._draws = list(draws)

    def random(self, n: int) -> np.ndarray:
        out = [self._draws.pop(0) if self._draws else 0.5 for _ in range(n)]
        return np.array(out)


def test_n_answers_are_rows_of_one_prompt_that_end_on_their_own(make_engine, understand_params, tiny_model):
    """Each answer row continues the same prompt with its own draws: the request's generator hands each step's
    numbers to the rows still running, in row order. Rows that end (a stop id) give their blocks back at once."""
    engine = make_engine(max_rows=4)
    vocab = tiny_model.cfg.language.vocab_size
    stops = tuple(range(0, vocab, 3))  # a third of the vocabulary ends an answer: rows end at different steps
    params = understand_params(seed=7, temperature=1.5, max_new_tokens=10, n=3, stop_ids=stops)
    prefills: list[int] = []  # rows of each forward over more than one position
    model_extend = tiny_model.extend
    tiny_model.extend = lambda embeds, cache, rows, *rest, **kw: (
        prefills.append(embeds.shape[0]) if embeds.shape[1] > 1 else None,
        model_extend(embeds, cache, rows, *rest, **kw))[1]
    try:
        (result,) = run(_results(engine, [params]))
    finally:
        del tiny_model.extend
    assert prefills == [1]  # one prefill of one row; the other rows share its blocks
    assert len(result.answers) == 3
    steps = [len(a.token_ids) + (a.finish_reason == "stop") for a in result.answers]
    assert len(set(steps)) > 1, "pick a seed whose answers end at different steps"
    rng = np.random.default_rng(7)
    per_row: list[list[float]] = [[], [], []]
    for step in range(max(steps)):
        running = [row for row in range(3) if step < steps[row]]
        for row, draw in zip(running, rng.random(len(running)), strict=True):
            per_row[row].append(float(draw))
    for answer, draws in zip(result.answers, per_row, strict=True):
        alone = reference.understand(tiny_model, np.array(params.prompt_ids), params.pixel_values, params.image_id,
                                     -1, params.max_new_tokens, params.temperature, rng=_Draws(draws))
        ended = next((i for i, t in enumerate(alone) if t in stops), None)
        assert answer.token_ids == (alone if ended is None else alone[:ended])
        assert answer.finish_reason == ("length" if ended is None else "stop")
    assert result.completion_tokens == sum(len(a.token_ids) for a in result.answers)
    assert engine.stats()["free_rows"] == 4


def test_n_answers_leave_room_for_other_requests_as_they_end(make_engine, understand_params, tiny_model):
    engine = make_engine(max_rows=3)
    greedy = understand_params(seed=1, max_new_tokens=6)
    (alone,) = run(_results(make_engine(), [greedy]))
    stops = tuple(range(0, tiny_model.cfg.language.vocab_size, 5))
    many = understand_params(seed=3, temperature=1.5, max_new_tokens=10, n=3, stop_ids=stops)
    several, joined = run(_results(engine, [many, greedy]))
    assert joined.token_ids == alone.token_ids
    assert len({len(a.token_ids) for a in several.answers}) > 1
    # It started (in a row an ended answer gave back) before the last answer ended.
    assert joined.timings.queued_s < several.timings.total_s
