"""The tiny-checkpoint builder: published layout, deterministic, and logits far from uniform."""

from __future__ import annotations

import json

import numpy as np
import paddle

from model.checkpoint import safetensors_io
from model.tiny_checkpoint import build_tiny_checkpoint
from tests.model.test_published_shapes import published_shapes


def test_same_seed_writes_identical_files(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", seed=4)
    b = build_tiny_checkpoint(tmp_path / "b", seed=4)
    for name in sorted(p.name for p in a.iterdir()):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_tiny_checkpoint(tmp_path / "c", seed=5)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_files_and_key_names_are_the_published_ones(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "model.safetensors"} <= names
    stored = set(safetensors_io.load(tiny_dir / "model.safetensors"))
    # the same key names as a published checkpoint (sizes differ; layer counts differ)
    published_prefixes = {k.split(".")[0] for k in published_shapes(2048, 5632, 1)}
    assert {k.split(".")[0] for k in stored} == published_prefixes
    for key in ("language_model.model.layers.0.self_attn.q_proj.weight", "language_model.lm_head.weight",
                "gen_vision_model.decoder.conv_blocks.0.attn.0.q.weight", "vision_model.vision_tower.pos_embed",
                "gen_vision_model.encoder.conv_in.weight", "gen_vision_model.quantize.codebook_used"):
        assert key in stored
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "multi_modality" and config["random_weights"] is True


def _entropy_ratio(logits: np.ndarray) -> float:
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return float((-(p * np.log(p + 1e-30)).sum(axis=-1) / np.log(logits.shape[-1])).mean())


def test_text_and_image_logits_are_far_from_uniform(tiny_model):
    ids = paddle.to_tensor(np.arange(10, 30)[None])
    hidden = tiny_model.language_model.llama(input_ids=ids, return_dict=True).last_hidden_state
    assert _entropy_ratio(tiny_model.text_logits(hidden).numpy()[0]) < 0.7
    assert _entropy_ratio(tiny_model.image_logits(hidden).numpy()[0]) < 0.7
