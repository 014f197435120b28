"""The static-cache backbone against PaddleNLP's own Llama forward, and cached decoding against recomputation."""

from __future__ import annotations

import numpy as np
import paddle
import pytest


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


def _prefill(model, cache, ids: np.ndarray, mask: np.ndarray, slots: list[int]) -> np.ndarray:
    embeds = model.embed_text(paddle.to_tensor(ids))
    return model.prefill(embeds, cache, slots, paddle.to_tensor(mask), paddle.to_tensor(_positions(mask))).numpy()


def _decode(model, cache, tokens: np.ndarray, lengths: list[int], positions: list[int]) -> np.ndarray:
    embeds = model.embed_text(paddle.to_tensor(tokens.reshape(-1, 1)))
    return model.decode_step(embeds, cache, lengths, positions).numpy()[:, 0]


ROWS = [[3, 17, 99, 250, 7, 8, 41], [5, 6, 300, 12], [400, 401]]


@pytest.fixture(params=[True, False], ids=["host-views", "device-path"])
def new_cache(request, tiny_model):
    """Both ways the cache keeps its books: numpy views of CPU memory, and the index/scatter path GPUs take."""
    return lambda slots, max_len: tiny_model.new_cache(slots, max_len, host_views=request.param)


def test_prefill_matches_paddlenlp_forward_on_real_positions(tiny_model):
    ids, mask = _left_padded(ROWS)
    ours = _prefill(tiny_model, tiny_model.new_cache(slots=4, max_len=32), ids, mask, [0, 1, 2])
    theirs = tiny_model.language_model.llama(
        inputs_embeds=tiny_model.embed_text(paddle.to_tensor(ids)), attention_mask=paddle.to_tensor(mask),
        position_ids=paddle.to_tensor(_positions(mask)), return_dict=True).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_left_padded_batch_equals_rows_run_alone(tiny_model):
    ids, mask = _left_padded(ROWS)
    batch = _prefill(tiny_model, tiny_model.new_cache(4, 32), ids, mask, [0, 1, 2])
    for i, row in enumerate(ROWS):
        alone = _prefill(tiny_model, tiny_model.new_cache(1, 32), np.array([row]),
                         np.ones((1, len(row)), np.int64), [0])[0]
        np.testing.assert_allclose(batch[i, -len(row):], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("placement", [[0, 1, 2], [2, 0, 1]])
def test_cached_decode_equals_full_recomputation(tiny_model, new_cache, placement):
    ids, mask = _left_padded(ROWS)
    cache = new_cache(4, 32)
    _prefill(tiny_model, cache, ids, mask, placement)
    order = np.argsort(placement)  # decode runs rows in slot order: slot s holds ROWS[order[s]]
    width = ids.shape[1]
    rng = np.random.default_rng(1)
    for step in range(5):
        new = rng.integers(0, 500, (len(ROWS), 1))
        positions = mask.sum(axis=1)
        hidden = _decode(tiny_model, cache, new[order], [width + step] * len(ROWS), positions[order].tolist())
        ids = np.concatenate([ids, new], axis=1)
        mask = np.concatenate([mask, np.ones_like(new)], axis=1)
        full = _prefill(tiny_model, tiny_model.new_cache(3, 32), ids, mask, [0, 1, 2])[:, -1]
        np.testing.assert_allclose(hidden, full[order], atol=1e-5, rtol=0)


def test_copied_slot_continues_like_the_original(tiny_model, new_cache):
    cache = new_cache(4, 32)
    row = np.array([ROWS[0]])
    _prefill(tiny_model, cache, row, np.ones_like(row), [0])
    cache.copy(0, [1, 2])
    width = row.shape[1]
    hidden = _decode(tiny_model, cache, np.array([42, 42, 42]), [width] * 3, [width] * 3)
    np.testing.assert_allclose(hidden[1], hidden[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(hidden[2], hidden[0], atol=1e-6, rtol=0)


def test_moving_a_row_down_a_slot_keeps_its_history(tiny_model, new_cache):
    """Compaction: when the row in slot 1 finishes, the row in slot 2 moves down and decodes on unchanged."""
    cache = new_cache(4, 32)
    for slot, row in enumerate(ROWS):
        _prefill(tiny_model, cache, np.array([row]), np.ones((1, len(row)), np.int64), [slot])
    cache.copy(2, [1])
    moved = _decode(tiny_model, cache, np.array([9, 10]), [len(ROWS[0]), len(ROWS[2])],
                    [len(ROWS[0]), len(ROWS[2])])
    fresh = tiny_model.new_cache(1, 32)
    _prefill(tiny_model, fresh, np.array([ROWS[2]]), np.ones((1, 2), np.int64), [0])
    alone = _decode(tiny_model, fresh, np.array([10]), [2], [2])
    np.testing.assert_allclose(moved[1], alone[0], atol=1e-5, rtol=0)


def test_prompt_longer_than_cache_is_refused(tiny_model):
    row = np.arange(40)[None]
    with pytest.raises(ValueError, match="exceeds the KV cache length"):
        _prefill(tiny_model, tiny_model.new_cache(1, 32), row, np.ones_like(row), [0])


def test_decoding_past_the_cache_is_refused(tiny_model):
    cache = tiny_model.new_cache(1, 8)
    _prefill(tiny_model, cache, np.arange(8)[None], np.ones((1, 8), np.int64), [0])
    with pytest.raises(ValueError, match="exceeds the KV cache length"):
        _decode(tiny_model, cache, np.array([1]), [8], [8])


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
    cache = gqa_model.new_cache(4, 32)
    ours = _prefill(gqa_model, cache, ids, mask, [0, 1, 2])
    theirs = gqa_model.language_model.llama(
        inputs_embeds=gqa_model.embed_text(paddle.to_tensor(ids)), attention_mask=paddle.to_tensor(mask),
        position_ids=paddle.to_tensor(_positions(mask)), return_dict=True).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)
    new = np.array([[11], [12], [13]])
    hidden = _decode(gqa_model, cache, new[:, 0], [ids.shape[1]] * 3, mask.sum(axis=1).tolist())
    ids, mask = np.concatenate([ids, new], axis=1), np.concatenate([mask, np.ones_like(new)], axis=1)
    full = _prefill(gqa_model, gqa_model.new_cache(3, 32), ids, mask, [0, 1, 2])[:, -1]
    np.testing.assert_allclose(hidden, full, atol=1e-5, rtol=0)


def test_prefill_of_the_last_position_alone_matches_the_full_prefill_and_fills_the_same_cache(tiny_model):
    ids, mask = _left_padded(ROWS)
    full_cache, last_cache = tiny_model.new_cache(4, 32), tiny_model.new_cache(4, 32)
    embeds = tiny_model.embed_text(paddle.to_tensor(ids))
    positions = paddle.to_tensor(_positions(mask))
    full = tiny_model.prefill(embeds, full_cache, [0, 1, 2], paddle.to_tensor(mask), positions).numpy()
    last = tiny_model.prefill(embeds, last_cache, [0, 1, 2], paddle.to_tensor(mask), positions, last_only=True).numpy()
    assert last.shape == (3, 1, full.shape[-1])
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6, rtol=0)
    for layer in range(len(full_cache.keys)):
        np.testing.assert_array_equal(last_cache.keys[layer].numpy(), full_cache.keys[layer].numpy())
        np.testing.assert_array_equal(last_cache.values[layer].numpy(), full_cache.values[layer].numpy())
