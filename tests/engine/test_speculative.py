"""Speculative Jacobi decoding in the engine over the real tiny model: greedy tokens equal plain decoding's, a seed
gives the same images whatever else runs, progress and previews follow the tokens, and cut-back windows leave the KV
pool as it was."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from service.engine import EngineConfig
from service.engine.previews import grey_undrawn, partial_tokens
from service.engine.speculative import speculation_for
from service.engine.types import GenerateResult, PreviewEvent, ProgressEvent, UnderstandResult
from tests.service.helpers import plain_decode, wait_for_decoder_idle


async def _results(engine, params_list):
    handles = [engine.submit(p) for p in params_list]
    return await asyncio.gather(*(h.result() for h in handles))


@pytest.mark.parametrize("window", [1, 2, 8])
def test_greedy_speculative_tokens_equal_plain_ones_in_a_mixed_batch(make_engine, generate_params,
                                                                    understand_params, window):
    load = [generate_params(seed=s, temperature=0.0, parallel_size=p, cfg_weight=w)
            for s, p, w in [(1, 2, 5.0), (2, 1, 3.0), (3, 3, 1.0)]]
    load += [understand_params(seed=s, temperature=0.0, max_new_tokens=12) for s in (4, 5)]
    plain = asyncio.run(_results(make_engine(), load))
    speculative = [dataclasses.replace(p, speculative=True) if p.kind == "generate" else p for p in load]
    engine = make_engine(speculative_window=window, speculative_positions=0)  # every request gets the window
    together = asyncio.run(_results(engine, speculative))
    for alone, mixed in zip(plain, together, strict=True):
        if isinstance(alone, UnderstandResult):
            assert mixed.token_ids == alone.token_ids
        else:
            assert isinstance(mixed, GenerateResult)
            np.testing.assert_array_equal(mixed.tokens, alone.tokens)
            assert mixed.timings.forward_passes <= alone.timings.forward_passes
    assert engine.blocks.used == 0


def test_same_seed_same_images_whatever_else_runs(make_engine, generate_params, understand_params):
    engine = make_engine(speculative=True, speculative_window=4)
    target = generate_params(seed=11, temperature=1.0, parallel_size=3)
    alone = asyncio.run(_results(engine, [target]))[0]
    crowd = [generate_params(seed=12, parallel_size=2), understand_params(seed=14, temperature=1.0),
             dataclasses.replace(generate_params(seed=13), speculative=False)]
    crowded = asyncio.run(_results(engine, [crowd[0], target, *crowd[1:]]))[1]
    np.testing.assert_array_equal(crowded.tokens, alone.tokens)
    other = asyncio.run(_results(engine, [dataclasses.replace(target, seed=99)]))[0]
    assert not np.array_equal(other.tokens, alone.tokens)


def test_progress_counts_tokens_and_previews_show_the_drawing(make_engine, generate_params, tiny_model):
    engine = make_engine(speculative=True, speculative_window=8, progress_every=2)
    total = tiny_model.cfg.gen_vision.num_tokens
    params = generate_params(seed=3, parallel_size=3, previews=1)

    async def collect():
        return [e async for e in engine.submit(params).events()]

    # a preview the drawing overtakes is skipped: to see it, each step waits until the decoder has nothing to do
    engine.fault_hook = lambda request: wait_for_decoder_idle(engine)
    events = asyncio.run(collect())
    engine.fault_hook = None
    result = events[-1].result
    assert isinstance(result, GenerateResult)
    assert [e.steps_done for e in events if isinstance(e, ProgressEvent)] == list(range(2, total + 1, 2))
    (preview,) = [e for e in events if isinstance(e, PreviewEvent)]
    assert preview.steps_done == total // 2
    expected = plain_decode(engine, partial_tokens(result.tokens[:, :total // 2], total))
    grid = tiny_model.cfg.gen_vision.grid
    np.testing.assert_array_equal(preview.images, grey_undrawn(expected, total // 2, grid))
    assert result.timings.forward_passes < total  # several tokens in some steps, one each in the others


def test_rejected_windows_leave_no_blocks_and_no_wrong_prefix(make_engine, generate_params):
    """Small blocks, so that the prompt fills some (entered in the prefix table) and windows cross block ends;
    after speculative generations with many rejected drafts the pool is idle again, and a greedy request with the
    same prompt reuses the cached prompt blocks and draws what an engine that never ran anything draws."""
    engine = make_engine(speculative=True, speculative_window=8, block_size=2, kv_blocks=400)
    drawn = asyncio.run(_results(engine, [generate_params(seed=s, parallel_size=2) for s in (1, 2, 3)]))
    assert all(r.timings.forward_passes > 1 for r in drawn)
    assert engine.blocks.used == 0 and engine.blocks.available == engine.blocks.num_blocks
    follow = dataclasses.replace(generate_params(seed=1, parallel_size=2), temperature=0.0, speculative=False)
    reused_before = engine.blocks.stats.reused_tokens
    (again,) = asyncio.run(_results(engine, [follow]))
    assert engine.blocks.stats.reused_tokens > reused_before
    (fresh,) = asyncio.run(_results(make_engine(block_size=2, kv_blocks=400, prefix_cache=False), [follow]))
    np.testing.assert_array_equal(again.tokens, fresh.tokens)
    assert engine.blocks.used == 0 and engine.blocks.available == engine.blocks.num_blocks


def test_a_request_of_many_images_gets_a_window_its_step_can_afford(generate_params):
    config = EngineConfig(speculative=True, speculative_window=4, speculative_positions=32)
    windows = {p: speculation_for(generate_params(parallel_size=p), config, 256) for p in (1, 4, 8, 16)}
    assert windows[1].window == 4  # 2 rows x 5 positions
    assert windows[4].window == 3  # 8 rows x 4 positions
    assert windows[8].window == 1  # 16 rows x 2 positions
    assert windows[16] is None  # 32 rows: not even one draft each
    unguided = speculation_for(generate_params(parallel_size=16, cfg_weight=1.0), config, 256)
    assert unguided is not None and unguided.window == 1  # 16 rows
    unlimited = dataclasses.replace(config, speculative_positions=0)
    assert speculation_for(generate_params(parallel_size=16), unlimited, 256).window == 4
    off = dataclasses.replace(config, speculative=False)
    assert speculation_for(generate_params(parallel_size=1), off, 256) is None
    assert speculation_for(dataclasses.replace(generate_params(), speculative=True), off, 256).window == 4
