"""The paged backbone against PaddleNLP's own Llama forward, and cached decoding (through block tables, with
blocks scattered and shared) against recomputation."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.kv_cache import RowBatch

BLOCK = 4  # small blocks: every row spans several


def _left_padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def _positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


class Blocks:
    """Hands out the pool's blocks in a shuffled order, so rows never sit in consecutive blocks."""

    def __init__(self, cache, seed: int = 0) -> None:
        self.cache = cache
        self.free = np.random.default_rng(seed).permutation(cache.num_blocks).tolist()

    def table(self, positions: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-positions // self.cache.block_size))]


def _prefill(model, cache, ids: np.ndarray, mask: np.ndarray, tables: list[list[int]],
             cached: list[int] | None = None, last_only: bool = False) -> np.ndarray:
    """ids [B, T] left-padded (mask 0 on padding) after `cached` positions each row already holds."""
    embeds = model.embed_text(paddle.to_tensor(ids))
    pad = (mask.shape[1] - mask.sum(axis=1)).tolist()
    rows = RowBatch.of(tables, cached or [0] * len(tables), pad)
    return model.extend(embeds, cache, rows, last_only).numpy()


def _decode(model, cache, tokens: np.ndarray, tables: list[list[int]], lengths: list[int]) -> np.ndarray:
    embeds = model.embed_text(paddle.to_tensor(tokens.reshape(-1, 1)))
    return model.extend(embeds, cache, RowBatch.of(tables, lengths)).numpy()[:, 0]


ROWS = [[3, 17, 99, 250, 7, 8, 41], [5, 6, 300, 12], [400, 401]]


@pytest.fixture(params=[True, False], ids=["host-views", "device-path"])
def new_cache(request, tiny_model):
    """Both ways the cache keeps its books: numpy views of CPU memory, and the index/scatter path GPUs take."""
    return lambda blocks: tiny_model.new_cache(blocks, BLOCK, host_views=request.param)


def _fresh_prefill(model, rows: list[list[int]]) -> np.ndarray:
    ids, mask = _left_padded(rows)
    cache = model.new_cache(32, BLOCK)
    blocks = Blocks(cache, seed=9)
    return _prefill(model, cache, ids, mask, [blocks.table(ids.shape[1]) for _ in rows])


def test_prefill_matches_paddlenlp_forward_on_real_positions(tiny_model, new_cache):
    ids, mask = _left_padded(ROWS)
    cache = new_cache(32)
    blocks = Blocks(cache)
    ours = _prefill(tiny_model, cache, ids, mask, [blocks.table(len(r)) for r in ROWS])
    theirs = tiny_model.language_model.llama(
        inputs_embeds=tiny_model.embed_text(paddle.to_tensor(ids)), attention_mask=paddle.to_tensor(mask),
        position_ids=paddle.to_tensor(_positions(mask)), return_dict=True).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_left_padded_batch_equals_rows_run_alone(tiny_model):
    batch = _fresh_prefill(tiny_model, ROWS)
    for i, row in enumerate(ROWS):
        alone = _fresh_prefill(tiny_model, [row])[0]
        np.testing.assert_allclose(batch[i, -len(row):], alone, atol=1e-5, rtol=0)


def test_cached_decode_equals_full_recomputation(tiny_model, new_cache):
    ids, mask = _left_padded(ROWS)
    cache = new_cache(32)
    blocks = Blocks(cache, seed=1)
    tables = [blocks.table(len(r)) for r in ROWS]
    _prefill(tiny_model, cache, ids, mask, tables)
    lengths = [len(r) for r in ROWS]
    rng = np.random.default_rng(1)
    for _ in range(6):
        new = rng.integers(0, 500, (len(ROWS), 1))
        for b, table in enumerate(tables):
            if lengths[b] == len(table) * BLOCK:  # the row fills its last block: it takes another
                table += blocks.table(1)
        hidden = _decode(tiny_model, cache, new[:, 0], tables, lengths)
        lengths = [n + 1 for n in lengths]
        ids = np.concatenate([ids, new], axis=1)
        mask = np.concatenate([mask, np.ones_like(new)], axis=1)
        full = _fresh_prefill(tiny_model, [row[m.astype(bool)].tolist() for row, m in zip(ids, mask, strict=True)])
        np.testing.assert_allclose(hidden, full[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cached", [4, 6])  # a prefix of whole blocks, or one ending inside a block
def test_a_prompt_after_a_cached_prefix_equals_the_whole_prompt(tiny_model, new_cache, cached):
    prompt = ROWS[0] + [11, 12, 13]
    cache = new_cache(32)
    table = Blocks(cache, seed=2).table(len(prompt))
    head = np.array([prompt[:cached]])
    _prefill(tiny_model, cache, head, np.ones_like(head), [table])
    tail = np.array([prompt[cached:]])
    ours = _prefill(tiny_model, cache, tail, np.ones_like(tail), [table], cached=[cached])
    whole = _fresh_prefill(tiny_model, [prompt])
    np.testing.assert_allclose(ours[0], whole[0, cached:], atol=1e-5, rtol=0)


def test_rows_sharing_prefix_blocks_continue_like_rows_of_their_own(tiny_model, new_cache):
    """Several answers to one prompt: the full blocks are shared, the partly filled last one is copied."""
    prompt = ROWS[0]  # 7 positions: one full block of 4, three in the second
    cache = new_cache(32)
    blocks = Blocks(cache, seed=3)
    first = blocks.table(len(prompt))
    row = np.array([prompt])
    _prefill(tiny_model, cache, row, np.ones_like(row), [first])
    second = [first[0], *blocks.table(1)]
    cache.copy_blocks([(first[1], second[1])])
    tokens = np.array([42, 43])
    hidden = _decode(tiny_model, cache, tokens, [first, second], [7, 7])
    alone = [_fresh_prefill(tiny_model, [prompt + [int(t)]])[0, -1] for t in tokens]
    np.testing.assert_allclose(hidden, np.stack(alone), atol=1e-5, rtol=0)


def test_rows_longer_than_their_tables_are_refused(tiny_model):
    cache = tiny_model.new_cache(8, BLOCK)
    row = np.arange(9)[None]
    with pytest.raises(ValueError, match="need more blocks than their tables hold"):
        _prefill(tiny_model, cache, row, np.ones_like(row), [[0, 1]])


@pytest.fixture(scope="module")
def gqa_model():
    """A tiny random network whose backbone shares each key/value head between two query heads."""
    import dataclasses

    from model.janus import JanusModel
    from model.tiny_checkpoint import preset_config

    cfg = preset_config("tiny")
    cfg = dataclasses.replace(cfg, language=dataclasses.replace(cfg.language, num_key_value_heads=2))
    paddle.seed(3)
    network = JanusModel(cfg)
    network.eval()
    return network


def test_grouped_query_attention_matches_paddlenlp_and_recomputation(gqa_model):
    ids, mask = _left_padded(ROWS)
    cache = gqa_model.new_cache(32, BLOCK)
    blocks = Blocks(cache, seed=4)
    tables = [blocks.table(len(r) + 1) for r in ROWS]
    ours = _prefill(gqa_model, cache, ids, mask, tables)
    theirs = gqa_model.language_model.llama(
        inputs_embeds=gqa_model.embed_text(paddle.to_tensor(ids)), attention_mask=paddle.to_tensor(mask),
        position_ids=paddle.to_tensor(_positions(mask)), return_dict=True).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)
    new = np.array([[11], [12], [13]])
    hidden = _decode(gqa_model, cache, new[:, 0], tables, mask.sum(axis=1).tolist())
    full = _fresh_prefill(gqa_model, [row + [int(t)] for row, t in zip(ROWS, new[:, 0], strict=True)])[:, -1]
    np.testing.assert_allclose(hidden, full, atol=1e-5, rtol=0)


def test_prefill_of_the_last_position_alone_matches_the_full_prefill_and_fills_the_same_cache(tiny_model):
    ids, mask = _left_padded(ROWS)
    full_cache, last_cache = tiny_model.new_cache(32, BLOCK), tiny_model.new_cache(32, BLOCK)
    blocks = Blocks(full_cache, seed=5)
    tables = [blocks.table(len(r)) for r in ROWS]
    full = _prefill(tiny_model, full_cache, ids, mask, tables)
    last = _prefill(tiny_model, last_cache, ids, mask, tables, last_only=True)
    assert last.shape == (3, 1, full.shape[-1])
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6, rtol=0)
    for layer in range(len(full_cache.keys)):
        np.testing.assert_array_equal(last_cache.keys[layer].numpy(), full_cache.keys[layer].numpy())
        np.testing.assert_array_equal(last_cache.values[layer].numpy(), full_cache.values[layer].numpy())


def test_a_large_pool_takes_memory_only_for_the_blocks_written(tiny_model, resident_mib):
    probe = tiny_model.new_cache(1, BLOCK)
    num_blocks = (768 << 20) // probe.block_bytes  # a 768 MiB pool
    before = resident_mib()
    cache = tiny_model.new_cache(num_blocks, BLOCK)
    assert cache.nbytes > 700 << 20
    assert resident_mib() - before < 64, "the whole pool became resident when it was made"
    ids, mask = _left_padded(ROWS)
    tables = [[num_blocks - 1 - 5 * r - j for j in range(-(-ids.shape[1] // BLOCK))] for r in range(len(ROWS))]
    hidden = _prefill(tiny_model, cache, ids, mask, tables)
    assert resident_mib() - before < 64
    np.testing.assert_allclose(hidden, _fresh_prefill(tiny_model, ROWS), rtol=1e-5, atol=1e-5)


def test_every_layer_reads_one_rotary_table_holding_the_rope_angles(tiny_model):
    """PaddleNLP's per-layer cos/sin tables (16 MiB a layer at 16k positions) are one shared table; its values
    are still RoPE's, computed here in numpy, so PaddleNLP's forward (the reference loops) is unchanged."""
    cfg = tiny_model.cfg.language
    layers = tiny_model.language_model.llama.layers
    assert len(layers) > 1
    tables = {id(layer.self_attn.rotary_emb.cos_cached) for layer in layers}
    tables |= {id(layer.self_attn.rotary_emb.sin_cached) for layer in layers}
    assert len(tables) == 2
    inverse = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
    angles = np.arange(cfg.max_position_embeddings)[:, None] * inverse[None]
    angles = np.concatenate([angles, angles], axis=1)
    rotary = layers[-1].self_attn.rotary_emb
    np.testing.assert_allclose(rotary.cos_cached.numpy()[0, :, 0], np.cos(angles), atol=2e-4)
    np.testing.assert_allclose(rotary.sin_cached.numpy()[0, :, 0], np.sin(angles), atol=2e-4)
