"""Speculative sampling keeps the distribution: on a model small enough to enumerate (3 image tokens, 4 positions),
the images drawn speculatively follow the exact joint distribution of plain sampling, computed independently from
PaddleNLP's own Llama forward over every prefix."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from scipy.stats import chisquare

from model.config import GenHeadConfig, JanusConfig, VQConfig
from model.reference import generation_rows
from model.sampling import guided_logits
from model.tiny_checkpoint import TOKENIZER_VOCAB, preset_config, random_weights, write_weights
from model.tokenizer_builder import build_tiny_tokenizer, write_preprocessor_config, write_processor_config
from service.engine import Engine, EngineConfig
from service.engine.types import GenerateParams

VOCAB = 3
CFG_WEIGHT = 1.5
TEMPERATURE = 2.0  # random weights give sharp logits: flatter, yet conditionals that differ by prefix
SAMPLES = 12_000
PARALLEL = 16


def _small_vocab_config() -> JanusConfig:
    cfg = preset_config("tiny")
    vq = VQConfig(image_token_size=VOCAB, n_embed=8, ch=32, ch_mult=[1, 1], z_channels=32, num_res_blocks=0,
                  image_size=4)  # a 2 x 2 grid: 4 image tokens
    head = GenHeadConfig(n_embed=cfg.gen_head.n_embed, image_token_embed=cfg.gen_head.image_token_embed,
                         image_token_size=VOCAB)
    return dataclasses.replace(cfg, gen_vision=vq, gen_head=head, name="janus-small-vocab-random")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from model.checkpoint.loader import load_janus

    out: Path = tmp_path_factory.mktemp("small-vocab")
    cfg = _small_vocab_config()
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    build_tiny_tokenizer(out, vocab_size=TOKENIZER_VOCAB)
    write_preprocessor_config(out, cfg.vision.image_size)
    write_processor_config(out, cfg.vision.num_tokens)
    write_weights(out, {k: (v, "F32") for k, v in random_weights(cfg, seed=7).items()})
    paddle.set_grad_enabled(False)
    model, _ = load_janus(out, cache_dir=False)
    return model


def _exact_joint(model, prompt: list[int], pad_id: int) -> np.ndarray:
    """P(image) for every image [VOCAB ** positions], from the guided conditionals of every prefix (no KV cache,
    PaddleNLP's Llama forward)."""
    positions = model.cfg.gen_vision.num_tokens
    cond, uncond = generation_rows(np.array(prompt), pad_id)
    joint = np.ones([VOCAB] * positions)
    for length in range(positions):
        prefixes = list(itertools.product(range(VOCAB), repeat=length))
        text = model.embed_text(paddle.to_tensor(np.stack([cond, uncond]), dtype="int64"))  # [2, T, H]
        embeds = paddle.tile(text, [len(prefixes), 1, 1])
        if length:
            ids = np.repeat(np.array(prefixes, np.int64), 2, axis=0)  # cond and uncond rows of each prefix
            embeds = paddle.concat([embeds, model.embed_image_tokens(paddle.to_tensor(ids))], axis=1)
        rows, T = embeds.shape[0], embeds.shape[1]
        hidden = model.language_model.llama(
            inputs_embeds=embeds, position_ids=paddle.tile(paddle.arange(T, dtype="int64")[None], [rows, 1]),
            attention_mask=paddle.ones([rows, T], "int64"), use_cache=False, return_dict=True).last_hidden_state
        logits = model.image_logits(hidden[:, -1]).astype("float64").numpy()
        mixed = guided_logits(logits[0::2], logits[1::2], CFG_WEIGHT) / TEMPERATURE
        probs = np.exp(mixed - mixed.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for prefix, p in zip(prefixes, probs, strict=True):
            for token in range(VOCAB):
                index = (*prefix, token) + (slice(None),) * (positions - length - 1)
                joint[index] *= p[token]
    return joint.reshape(-1)


def _sample_images(model, params: GenerateParams, speculative: bool, window: int) -> tuple[np.ndarray, float]:
    """The images of SAMPLES draws as joint cells, and the mean forwards a request took."""
    engine = Engine(model, EngineConfig(max_rows=8 * 2 * PARALLEL, max_seq_len=64, max_waiting=2000,
                                        speculative=speculative, speculative_window=window, speculative_positions=0))
    engine.start()
    engine.warmup()
    try:
        async def run() -> list:
            handles = [engine.submit(dataclasses.replace(params, seed=seed)) for seed in range(SAMPLES // PARALLEL)]
            return await asyncio.gather(*(h.result() for h in handles))

        results = asyncio.run(run())
        assert engine.blocks.used == 0
    finally:
        engine.shutdown(drain_timeout_s=0)
    tokens = np.concatenate([r.tokens for r in results])
    forwards = float(np.mean([r.timings.forward_passes for r in results]))
    return np.ravel_multi_index(tokens.T, [VOCAB] * tokens.shape[1]), forwards


def _goodness_of_fit(cells: np.ndarray, joint: np.ndarray) -> float:
    """Chi-square p-value of the observed images against the exact joint (cells expected fewer than 5 times
    pooled into one)."""
    observed = np.bincount(cells, minlength=joint.size).astype(float)
    expected = joint * len(cells)
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize(("speculative", "window"), [(False, 1), (True, 1), (True, 3)])
def test_images_follow_the_exact_joint_distribution(small_model, tiny_tokenizer, speculative, window):
    tok = tiny_tokenizer
    prompt = [tok.bos_id, 11, 12, 13, tok.boi_id]
    joint = _exact_joint(small_model, prompt, tok.pad_id)
    assert joint.sum() == pytest.approx(1.0)
    assert joint.max() < 0.3 and (joint > 1 / joint.size / 4).sum() > 20  # no image dominates: a test with teeth
    params = GenerateParams(prompt_ids=prompt, pad_id=tok.pad_id, image_tokens=small_model.cfg.gen_vision.num_tokens,
                            parallel_size=PARALLEL, cfg_weight=CFG_WEIGHT, temperature=TEMPERATURE)
    cells, forwards = _sample_images(small_model, params, speculative, window)
    assert _goodness_of_fit(cells, joint) > 1e-3
    positions = small_model.cfg.gen_vision.num_tokens
    assert forwards < positions if speculative else forwards == positions  # drafts were verified, and kept
