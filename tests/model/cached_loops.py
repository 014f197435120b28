"""Greedy one-request loops over the serving network's own primitives (prefill and decode steps on the paged KV
cache), for networks that PaddleNLP's Llama forward cannot run: weights stored as bf16 on the CPU, which only the
project's kernels multiply."""

from __future__ import annotations

import numpy as np
import paddle

from model.janus import JanusModel
from model.kv_cache import PagedKVCache, RowBatch
from model.reference import generation_rows
from model.sampling import guided_logits


def greedy_text(model: JanusModel, input_ids: np.ndarray, pixel_values: np.ndarray | None, image_id: int,
                eos_id: int, max_new_tokens: int) -> list[int]:
    """input_ids [T] (image tags expanded) -> greedy new token ids, stopping after EOS (included)."""
    features = model.encode_images(paddle.to_tensor(pixel_values)) if pixel_values is not None else None
    embeds = model.embed_prompt(paddle.to_tensor(input_ids[None], dtype="int64"), features, image_id)
    T = len(input_ids)
    cache, tables = rows_of(model, 1, T + max_new_tokens)
    hidden = model.extend(embeds, cache, RowBatch.of(tables, [0]), last_only=True)
    new: list[int] = []
    for step in range(max_new_tokens):
        token = int(model.text_logits(hidden[:, -1]).numpy()[0].argmax())
        new.append(token)
        if token == eos_id or step == max_new_tokens - 1:
            break
        hidden = model.extend(model.embed_text(paddle.to_tensor([[token]], dtype="int64")), cache,
                              RowBatch.of(tables, [T + step]))
    return new


def greedy_image(model: JanusModel, prompt_ids: np.ndarray, pad_id: int, cfg_weight: float) -> np.ndarray:
    """prompt_ids [T] ending with <begin_of_image> -> greedy classifier-free-guided image tokens [1, tokens]."""
    steps = model.cfg.gen_vision.num_tokens
    rows = np.stack(generation_rows(prompt_ids, pad_id))  # conditional, unconditional
    T = rows.shape[1]
    cache, tables = rows_of(model, 2, T + steps)
    hidden = model.extend(model.embed_text(paddle.to_tensor(rows, dtype="int64")), cache, RowBatch.of(tables, [0, 0]),
                          last_only=True)
    tokens = np.zeros((1, steps), np.int64)
    for step in range(steps):
        logits = model.image_logits(hidden[:, -1]).numpy()
        tokens[0, step] = int(guided_logits(logits[0:1], logits[1:2], cfg_weight)[0].argmax())
        if step == steps - 1:
            break
        both = paddle.to_tensor([tokens[0, step]] * 2, dtype="int64")
        hidden = model.extend(model.embed_image_tokens(both).unsqueeze(1), cache, RowBatch.of(tables, [T + step] * 2))
    return tokens


def rows_of(model: JanusModel, count: int, length: int, block_size: int = 16) -> tuple[PagedKVCache, list[list[int]]]:
    """A cache with `count` rows of `length` positions, each in blocks of its own."""
    blocks = -(-length // block_size)
    return model.new_cache(count * blocks, block_size), [list(range(i * blocks, (i + 1) * blocks))
                                                         for i in range(count)]
