"""Plain one-request loops: the correctness baseline and the benchmark baseline.

They run the backbone through PaddleNLP's own Llama forward with its own (concatenating) KV cache, the way a
straightforward script would, and share nothing with the serving engine but the network and the sampler.
"""

from __future__ import annotations

import numpy as np
import paddle

from model.janus import JanusModel
from model.sampling import choose, guided_logits


def _forward(model: JanusModel, embeds: paddle.Tensor, positions: paddle.Tensor, total_len: int,
             past: tuple | None) -> tuple[paddle.Tensor, tuple]:
    rows = embeds.shape[0]
    # Explicit positions and a 2-D mask: PaddleNLP mis-positions inputs_embeds without them.
    out = model.language_model.llama(
        inputs_embeds=embeds, position_ids=positions, attention_mask=paddle.ones([rows, total_len], "int64"),
        past_key_values=past, use_cache=True, return_dict=True)
    return out.last_hidden_state, out.past_key_values


def understand(model: JanusModel, input_ids: np.ndarray, pixel_values: np.ndarray | None, image_id: int,
               eos_id: int, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, step_logits: list[np.ndarray] | None = None,
               rng: np.random.Generator | None = None) -> list[int]:
    """input_ids [T] (image tags already expanded) -> new token ids (stops after EOS, which is included).

    `step_logits`, when given, receives each step's logits [V]; `rng`, when given, replaces the seed's generator."""
    rng = np.random.default_rng(seed) if rng is None else rng
    with paddle.no_grad():
        ids = paddle.to_tensor(input_ids[None], dtype="int64")
        features = model.encode_images(paddle.to_tensor(pixel_values)) if pixel_values is not None else None
        embeds = model.embed_prompt(ids, features, image_id)
        T = ids.shape[1]
        hidden, past = _forward(model, embeds, paddle.arange(T, dtype="int64")[None], T, None)
        new: list[int] = []
        for step in range(max_new_tokens):
            logits = model.text_logits(hidden[:, -1]).astype("float32").numpy()
            if step_logits is not None:
                step_logits.append(logits[0])
            token = int(choose(logits, temperature, rng, top_p)[0])
            new.append(token)
            if token == eos_id or step == max_new_tokens - 1:
                break
            embeds = model.embed_text(paddle.to_tensor([[token]], dtype="int64"))
            hidden, past = _forward(model, embeds, paddle.to_tensor([[T + step]], dtype="int64"),
                                    T + step + 1, past)
    return new


def generation_rows(prompt_ids: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The conditional row and its unconditional twin: every position but the first and last becomes padding."""
    uncond = prompt_ids.copy()
    uncond[1:-1] = pad_id
    return prompt_ids, uncond


def generate(model: JanusModel, prompt_ids: np.ndarray, pad_id: int, parallel_size: int = 1,
             cfg_weight: float = 5.0, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """prompt_ids [T] ending with <begin_of_image> -> image tokens [parallel_size, image tokens]."""
    rng = np.random.default_rng(seed)
    steps = model.cfg.gen_vision.num_tokens
    cond, uncond = generation_rows(prompt_ids, pad_id)
    rows = np.stack([cond, uncond] * parallel_size)  # pairs: row 2i conditional, row 2i+1 unconditional
    T = rows.shape[1]
    tokens = np.zeros((parallel_size, steps), np.int64)
    with paddle.no_grad():
        embeds = model.embed_text(paddle.to_tensor(rows, dtype="int64"))
        positions = paddle.expand(paddle.arange(T, dtype="int64")[None], [2 * parallel_size, T])
        hidden, past = _forward(model, embeds, positions, T, None)
        for step in range(steps):
            logits = model.image_logits(hidden[:, -1]).astype("float32").numpy()
            mixed = guided_logits(logits[0::2], logits[1::2], cfg_weight)
            chosen = choose(mixed, temperature, rng)
            tokens[:, step] = chosen
            if step == steps - 1:
                break
            both = paddle.to_tensor(np.repeat(chosen, 2), dtype="int64")
            embeds = model.embed_image_tokens(both).unsqueeze(1)
            positions = paddle.full([2 * parallel_size, 1], T + step, dtype="int64")
            hidden, past = _forward(model, embeds, positions, T + step + 1, past)
    return tokens
