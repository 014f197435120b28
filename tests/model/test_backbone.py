"""The static-cache backbone against PaddleNLP's own Llama forward, and cached decoding against recomputation."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.backbone import StepInput


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


def _prefill(model, cache, ids: np.ndarray, mask: np.ndarray, slots: list[int]) -> paddle.Tensor:
    step = StepInput(slots, [0] * len(slots), paddle.to_tensor(mask), paddle.to_tensor(_positions(mask)))
    return model.forward_backbone(model.embed_text(paddle.to_tensor(ids)), cache, step)


ROWS = [[3, 17, 99, 250, 7, 8, 41], [5, 6, 300, 12], [400, 401]]


def test_prefill_matches_paddlenlp_forward_on_real_positions(tiny_model):
    ids, mask = _left_padded(ROWS)
    cache = tiny_model.new_cache(slots=4, max_len=32)
    ours = _prefill(tiny_model, cache, ids, mask, [0, 1, 2]).numpy()
    theirs = tiny_model.language_model.llama(
        inputs_embeds=tiny_model.embed_text(paddle.to_tensor(ids)), attention_mask=paddle.to_tensor(mask),
        position_ids=paddle.to_tensor(_positions(mask)), return_dict=True).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_left_padded_batch_equals_rows_run_alone(tiny_model):
    ids, mask = _left_padded(ROWS)
    batch = _prefill(tiny_model, tiny_model.new_cache(4, 32), ids, mask, [0, 1, 2]).numpy()
    for i, row in enumerate(ROWS):
        alone = _prefill(tiny_model, tiny_model.new_cache(1, 32), np.array([row]), np.ones((1, len(row)), np.int64),
                         [0]).numpy()[0]
        np.testing.assert_allclose(batch[i, -len(row):], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("slots", [[0, 1, 2], [3, 0, 2]])
def test_cached_decode_equals_full_recomputation(tiny_model, slots):
    ids, mask = _left_padded(ROWS)
    cache = tiny_model.new_cache(4, 32)
    _prefill(tiny_model, cache, ids, mask, slots)
    width = ids.shape[1]
    rng = np.random.default_rng(1)
    for step in range(5):
        new = rng.integers(0, 500, (len(ROWS), 1))
        positions = (mask.sum(axis=1, keepdims=True)).astype(np.int64)
        hidden = tiny_model.forward_backbone(
            tiny_model.embed_text(paddle.to_tensor(new)), cache,
            StepInput(slots, [width + step] * len(ROWS), paddle.ones([len(ROWS), 1], "int64"),
                      paddle.to_tensor(positions))).numpy()[:, 0]
        ids = np.concatenate([ids, new], axis=1)
        mask = np.concatenate([mask, np.ones_like(new)], axis=1)
        full = _prefill(tiny_model, tiny_model.new_cache(3, 32), ids, mask, [0, 1, 2]).numpy()[:, -1]
        np.testing.assert_allclose(hidden, full, atol=1e-5, rtol=0)


def test_copied_slot_continues_like_the_original(tiny_model):
    cache = tiny_model.new_cache(4, 32)
    row = np.array([ROWS[0]])
    _prefill(tiny_model, cache, row, np.ones_like(row), [1])
    cache.copy(1, [2, 3], length=row.shape[1])
    token = paddle.to_tensor([[42], [42], [42]])
    hidden = tiny_model.forward_backbone(
        tiny_model.embed_text(token), cache,
        StepInput([1, 2, 3], [row.shape[1]] * 3, paddle.ones([3, 1], "int64"),
                  paddle.full([3, 1], row.shape[1], "int64"))).numpy()
    np.testing.assert_allclose(hidden[1], hidden[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(hidden[2], hidden[0], atol=1e-6, rtol=0)


def test_prompt_longer_than_cache_is_refused(tiny_model):
    row = np.arange(40)[None]
    with pytest.raises(ValueError, match="exceeds the KV cache length"):
        _prefill(tiny_model, tiny_model.new_cache(1, 32), row, np.ones_like(row), [0])
