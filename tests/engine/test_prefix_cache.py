"""Reused KV blocks change nothing: with the prefix cache (and the image-feature cache) each request's answer equals
the reference loop's (PaddleNLP's own forward, no paging, no cache), greedy and seeded; and the cache is really used
(prompt positions reused, as counted by the engine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model import reference
from service.engine.errors import InvalidRequest
from service.engine.types import FinishedEvent, TokenEvent, UnderstandParams, UnderstandResult

BLOCK = 4  # small blocks: prompts span many, and matches can end in many places
IMAGE = "image"


def run(coro):
    return asyncio.run(coro)


async def _results(engine, params_list):
    handles = [engine.submit(p) for p in params_list]
    return await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)


@pytest.fixture
def engine(make_engine):
    return make_engine(block_size=BLOCK)


@pytest.fixture
def ask(tiny_model, tiny_tokenizer):
    """(engine, prompt parts, images) -> the result, checked against the reference loop on the same prompt."""
    cfg, tok = tiny_model.cfg, tiny_tokenizer

    def build(parts: list, images: list[np.ndarray], temperature: float, seed: int = 0,
              max_new_tokens: int = 8) -> UnderstandParams:
        ids = [tok.bos_id]
        for part in parts:
            ids += [tok.boi_id, *[tok.image_id] * cfg.vision.num_tokens, tok.eoi_id] if part == IMAGE else part
        return UnderstandParams(prompt_ids=ids, pixel_values=np.stack(images) if images else None,
                                max_new_tokens=max_new_tokens, image_id=tok.image_id, temperature=temperature,
                                seed=seed, stop_ids=())  # no stop id: every answer runs its max_new_tokens

    def check(engine, parts: list, images: list[np.ndarray], temperature: float, seed: int = 0,
              max_new_tokens: int = 8) -> tuple[UnderstandResult, UnderstandParams]:
        params = build(parts, images, temperature, seed, max_new_tokens)
        (result,) = run(_results(engine, [params]))
        assert isinstance(result, UnderstandResult), result
        assert result.token_ids == _reference(tiny_model, params)
        return result, params

    check.build = build
    return check


def _reference(model, params: UnderstandParams) -> list[int]:
    return reference.understand(model, np.array(params.prompt_ids), params.pixel_values, params.image_id, -1,
                                params.max_new_tokens, params.temperature, params.top_p, params.seed)


def _image(tiny_model, seed: int) -> np.ndarray:
    size = tiny_model.cfg.vision.image_size
    return np.random.default_rng(seed).uniform(-1, 1, (3, size, size)).astype(np.float32)


def _text(seed: int, count: int) -> list[int]:
    return np.random.default_rng(seed).integers(10, 400, count).tolist()


TEMPERATURES = pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "seeded"])


@TEMPERATURES
def test_a_repeated_question_reuses_all_but_its_last_block(engine, ask, tiny_model, temperature):
    parts, images = [_text(1, 5), IMAGE, _text(2, 6)], [_image(tiny_model, 1)]
    first, params = ask(engine, parts, images, temperature, seed=3)
    second, _ = ask(engine, parts, images, temperature, seed=3)
    assert first.cached_tokens == 0
    assert second.cached_tokens == (len(params.prompt_ids) - 1) // BLOCK * BLOCK
    assert second.token_ids == first.token_ids


@TEMPERATURES
def test_a_conversation_reuses_every_earlier_turn_answers_included(engine, ask, tiny_model, temperature):
    parts, images = [_text(3, 7), IMAGE, _text(4, 3)], [_image(tiny_model, 2)]
    previous_len = 0
    for turn in range(3):
        result, params = ask(engine, parts, images, temperature, seed=turn, max_new_tokens=10)
        if turn:
            # everything the previous turn wrote: its prompt and the answer tokens it fed back (all but the last)
            assert result.cached_tokens == (previous_len + 9) // BLOCK * BLOCK
        previous_len = len(params.prompt_ids)
        parts = [*parts, result.token_ids, _text(10 + turn, 5)]


@TEMPERATURES
def test_the_same_text_with_another_image_reuses_only_what_comes_before_the_image(engine, ask, tiny_model,
                                                                                   temperature):
    parts = [_text(5, 9), IMAGE, _text(6, 4)]
    first, params = ask(engine, parts, [_image(tiny_model, 3)], temperature)
    second, _ = ask(engine, parts, [_image(tiny_model, 4)], temperature)
    image_start = params.prompt_ids.index(params.image_id)
    assert second.cached_tokens == image_start // BLOCK * BLOCK


@TEMPERATURES
@pytest.mark.parametrize("image_cache_mb", [256, 0], ids=["features-cached", "no-feature-cache"])
def test_a_second_question_about_an_image_reuses_its_blocks_when_its_features_are_at_hand(make_engine, ask, tiny_model,
                                                                                          temperature,
                                                                                          image_cache_mb):
    # the image is followed by the question in the same block: the match ends inside the image, which the prefill
    # can continue only from its features; without them the match goes back to the image's start
    engine = make_engine(block_size=BLOCK, feature_cache_mb=image_cache_mb)
    system, image = _text(14, 7), _image(tiny_model, 14)
    _, params = ask(engine, [system, IMAGE, _text(15, 5)], [image], temperature)
    second, _ = ask(engine, [system, IMAGE, _text(16, 5)], [image], temperature)
    image_start = params.prompt_ids.index(params.image_id)
    image_end = image_start + tiny_model.cfg.vision.num_tokens
    common = image_end + 1  # both prompts agree up to <end_of_image>
    assert image_start < common // BLOCK * BLOCK < image_end  # the last common full block ends inside the image
    expected = common // BLOCK * BLOCK if image_cache_mb else image_start // BLOCK * BLOCK
    assert second.cached_tokens == expected


@TEMPERATURES
def test_two_images_in_swapped_order_do_not_match_past_the_first(engine, ask, tiny_model, temperature):
    parts, a, b = [_text(7, 6), IMAGE, _text(8, 2), IMAGE, _text(9, 3)], _image(tiny_model, 5), _image(tiny_model, 6)
    _, params = ask(engine, parts, [a, b], temperature)
    swapped, _ = ask(engine, parts, [b, a], temperature)
    assert swapped.cached_tokens == params.prompt_ids.index(params.image_id) // BLOCK * BLOCK


@TEMPERATURES
def test_a_prefix_that_ends_inside_a_block_reuses_the_whole_blocks_before_it(engine, ask, temperature):
    common = _text(11, 2 * BLOCK + 1)  # with BOS: two full blocks and two positions of the third
    ask(engine, [common, _text(12, 6)], [], temperature)
    second, _ = ask(engine, [common, _text(13, 6)], [], temperature)
    assert second.cached_tokens == 2 * BLOCK


def test_eviction_under_memory_pressure(make_engine, ask, tiny_model):
    # each request needs (1 + 5 + 18 + 4 positions, 8 new) = 9 blocks of 4 at most: a pool of 20 keeps two
    engine = make_engine(block_size=BLOCK, kv_blocks=20)
    requests = [([_text(20 + i, 5), IMAGE, _text(30 + i, 4)], [_image(tiny_model, 20 + i)]) for i in range(4)]
    for parts, images in requests:
        ask(engine, parts, images, 1.0, seed=1)
    assert engine.blocks.stats.evictions > 0
    assert engine.blocks.cached > 0 and engine.blocks.available == 20  # cached blocks count as free
    again, _ = ask(engine, *requests[-1], 1.0, seed=1)  # still cached
    assert again.cached_tokens > 0
    evicted, _ = ask(engine, *requests[0], 1.0, seed=1)  # pushed out by the others: computed again
    assert evicted.cached_tokens == 0


def test_finished_requests_never_keep_a_request_waiting_for_memory(make_engine, ask, tiny_model):
    engine = make_engine(block_size=BLOCK, kv_blocks=12)
    for i in range(6):
        ask(engine, [_text(40 + i, 40)], [], 0.0, max_new_tokens=4)  # 46 positions: 12 blocks, the whole pool
    assert engine.blocks.cached >= 11 and engine.blocks.available == 12  # all kept, all counted as free
    ask(engine, [_text(50, 40)], [], 0.0, max_new_tokens=4)  # needs the whole pool: admitted by evicting


def test_a_request_larger_than_the_whole_pool_is_refused_naming_the_setting(make_engine, ask):
    engine = make_engine(block_size=BLOCK, kv_blocks=8)
    params = ask.build([_text(60, 30)], [], 0.0, max_new_tokens=8)  # 39 positions: 10 blocks
    with pytest.raises(InvalidRequest, match="raise JANUS_KV_CACHE_MB to at least"):
        engine.submit(params)


@TEMPERATURES
def test_requests_arriving_while_another_runs_share_its_prompt_blocks(engine, ask, tiny_model, temperature):
    system, image = _text(70, 6), _image(tiny_model, 70)
    first = ask.build([system, IMAGE, _text(71, 3)], [image], temperature, seed=1, max_new_tokens=24)
    later = [ask.build([system, IMAGE, _text(72 + i, 5)], [image], temperature, seed=2 + i) for i in range(3)]

    async def scenario():
        handle = engine.submit(first)
        others, head = [], None
        async for event in handle.events():
            if isinstance(event, TokenEvent) and not others:  # the first is prefilled and still running
                others.append(asyncio.gather(*(engine.submit(p).result() for p in later)))
            if isinstance(event, FinishedEvent):
                head = event.result
        return head, await others[0]

    head, tails = run(scenario())
    assert head.token_ids == _reference(tiny_model, first)
    image_end = first.prompt_ids.index(first.image_id) + tiny_model.cfg.vision.num_tokens + 1
    for params, result in zip(later, tails, strict=True):
        assert result.token_ids == _reference(tiny_model, params)
        assert result.cached_tokens == image_end // BLOCK * BLOCK


@TEMPERATURES
def test_requests_arriving_together_compute_their_common_prefix_once(engine, ask, tiny_model, temperature):
    system, image = _text(90, 6), _image(tiny_model, 90)
    together = [ask.build([system, IMAGE, _text(91 + i, 5)], [image], temperature, seed=i) for i in range(4)]
    results = run(_results(engine, together))
    image_end = together[0].prompt_ids.index(together[0].image_id) + tiny_model.cfg.vision.num_tokens + 1
    assert results[0].cached_tokens == 0
    for params, result in zip(together, results, strict=True):
        assert result.token_ids == _reference(tiny_model, params)
    assert all(r.cached_tokens == image_end // BLOCK * BLOCK for r in results[1:])


def test_a_repeated_image_elsewhere_skips_the_vision_encoder(engine, ask, tiny_model):
    image = _image(tiny_model, 80)
    ask(engine, [_text(81, 5), IMAGE, _text(82, 3)], [image], 0.0)
    hits = engine.runner.features.hits
    other, _ = ask(engine, [_text(83, 7), IMAGE, _text(84, 3)], [image], 0.0)  # another prefix: no block reused
    assert other.cached_tokens == 0
    assert engine.runner.features.hits == hits + 1


@pytest.mark.parametrize(("temperature", "parallel_size"), [(0.0, 3), (1.0, 3)])
def test_parallel_rows_share_their_prompt_blocks(make_engine, generate_params, tiny_model, temperature,
                                                 parallel_size):
    engine = make_engine(block_size=BLOCK)
    shared: list[list[list[int]]] = []
    postprocess = engine.scheduler.postprocess

    def spy(plan, out):  # the rows' tables right after their prompts' prefill
        report = postprocess(plan, out)
        if plan.prefill:
            shared.append([list(row.table.blocks) for row in plan.rows])
        return report

    engine.scheduler.postprocess = spy
    params = generate_params(seed=9, parallel_size=parallel_size, temperature=temperature)
    params.prompt_ids.insert(1, 7)  # 9 positions: two full blocks and one position of a third
    (result,) = run(_results(engine, [params]))
    expected = reference.generate(tiny_model, np.array(params.prompt_ids), params.pad_id, params.parallel_size,
                                  params.cfg_weight, params.temperature, params.seed)
    np.testing.assert_array_equal(result.tokens, expected)
    (tables,) = shared
    full = len(params.prompt_ids) // BLOCK
    cond, uncond = tables[:parallel_size], tables[parallel_size:]
    for group in (cond, uncond):
        assert all(t[:full] == group[0][:full] for t in group)  # the full prompt blocks: one copy for all rows
        assert len({t[full] for t in group}) == parallel_size  # the partly filled one: a copy per row
