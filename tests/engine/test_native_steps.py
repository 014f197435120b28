"""The engine's decode steps go through the decoder layers as plain kernel calls (`model.native_layers`), and what
it serves that way is still the reference loop's output (PaddleNLP's forward, no cache)."""

from __future__ import annotations

import asyncio

import numpy as np

from model import cpu_kernels, native_layers, reference
from model.attention import WINDOW_MAX_POSITIONS
from service.engine.types import GenerateResult, UnderstandResult

FORWARD = native_layers.forward


def test_engine_steps_run_as_kernel_calls_and_give_the_reference_outputs(make_engine, understand_params,
                                                                        generate_params, tiny_model, monkeypatch):
    ran = []  # (rows, positions a row, whether the kernel calls ran it) of each forward

    def counted(lm, cfg, embeds, *args, **kwargs):
        out = FORWARD(lm, cfg, embeds, *args, **kwargs)
        ran.append((embeds.shape[0], embeds.shape[1], out is not None))
        return out
    monkeypatch.setattr(native_layers, "forward", counted)
    engine = make_engine()
    ran.clear()  # warm-up forwards aside
    asked = understand_params(seed=4, max_new_tokens=6)
    drawn = generate_params(seed=6, parallel_size=1, temperature=1.0)  # with guidance: 2 rows, beside 1 text row

    async def both():
        handles = [engine.submit(asked), engine.submit(drawn)]
        return await asyncio.gather(*(h.result() for h in handles))
    answer, image = asyncio.run(both())
    assert isinstance(answer, UnderstandResult) and isinstance(image, GenerateResult)
    expected = reference.understand(tiny_model, np.array(asked.prompt_ids), asked.pixel_values, asked.image_id,
                                    asked.stop_ids[0], asked.max_new_tokens, asked.temperature, asked.top_p, asked.seed)
    assert answer.token_ids == (expected[:-1] if expected and expected[-1] in asked.stop_ids else expected)
    np.testing.assert_array_equal(image.tokens, reference.generate(
        tiny_model, np.array(drawn.prompt_ids), drawn.pad_id, 1, drawn.cfg_weight, drawn.temperature, drawn.seed))
    steps = tiny_model.cfg.gen_vision.num_tokens - 1  # the first image token comes from the prefill
    decodes = [native for _, positions, native in ran if positions == 1]
    assert len(decodes) >= steps and all(decodes)  # every decode step
    # the general loop took only what the kernel calls leave to it: the question's prompt (with its image: longer
    # than a window) and the guided pair's prompt (both rows in one forward; longer than a window and, these weights
    # being float32, more rows than their few-row kernel takes)
    general = [(rows, positions) for rows, positions, native in ran if not native]
    assert len(general) == 2
    assert all(positions > WINDOW_MAX_POSITIONS or rows * positions > cpu_kernels.LINEAR_MAX_ROWS
               for rows, positions in general)
