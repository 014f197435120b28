"""Engine fixtures: the real engine over the real tiny Paddle model, driven from asyncio in the test."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import Engine, EngineConfig
from service.engine.types import GenerateParams, UnderstandParams


@pytest.fixture
def make_engine(tiny_model):
    engines: list[Engine] = []

    def build(**overrides) -> Engine:
        config = EngineConfig(**{"max_rows": 16, "max_seq_len": 128, "max_waiting": 16, **overrides})
        engine = Engine(tiny_model, config)
        engine.start()
        engine.warmup()
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.shutdown(drain_timeout_s=0)


@pytest.fixture
def understand_params(tiny_model, tiny_tokenizer):
    cfg = tiny_model.cfg

    def build(seed: int = 0, images: int = 1, max_new_tokens: int = 8, temperature: float = 0.0,
              **extra) -> UnderstandParams:
        rng = np.random.default_rng(seed)
        tok = tiny_tokenizer
        ids = [tok.bos_id, *rng.integers(0, 400, 5).tolist()]
        for _ in range(images):
            ids += [tok.boi_id] + [tok.image_id] * cfg.vision.num_tokens + [tok.eoi_id]
        ids += rng.integers(0, 400, 4).tolist()
        size = cfg.vision.image_size
        pixels = rng.uniform(-1, 1, (images, 3, size, size)).astype(np.float32) if images else None
        return UnderstandParams(prompt_ids=ids, pixel_values=pixels, max_new_tokens=max_new_tokens,
                                image_id=tok.image_id, temperature=temperature, seed=seed,
                                **{"stop_ids": (tok.eos_id,), **extra})

    return build


@pytest.fixture
def generate_params(tiny_model, tiny_tokenizer):
    def build(seed: int = 0, parallel_size: int = 2, cfg_weight: float = 5.0, temperature: float = 1.0,
              **extra) -> GenerateParams:
        rng = np.random.default_rng(1000 + seed)
        tok = tiny_tokenizer
        ids = [tok.bos_id, *rng.integers(0, 400, 6).tolist(), tok.boi_id]
        return GenerateParams(prompt_ids=ids, pad_id=tok.pad_id, image_tokens=tiny_model.cfg.gen_vision.num_tokens,
                              parallel_size=parallel_size, cfg_weight=cfg_weight, temperature=temperature, seed=seed,
                              **extra)

    return build
