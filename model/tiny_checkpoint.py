"""Writes small random Janus checkpoints in exactly the published layout.

Same key names, torch [out, in] Linear layout, `config.json` / `preprocessor_config.json` / `processor_config.json`
and tokenizer files as the real Janus-Pro folders, so the loader and the service cannot tell the difference except
by size. Deterministic from the seed. Weights are scaled so that logits are far from uniform (sampling and greedy
decoding then behave like a trained model's: distinct, stable choices).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from model.checkpoint import keys, safetensors_io
from model.config import GenHeadConfig, JanusConfig, LanguageConfig, ProjectorConfig, VisionConfig, VQConfig
from model.runtime_env import cache_root
from model.tokenizer_builder import build_tiny_tokenizer, write_preprocessor_config, write_processor_config

TOKENIZER_VOCAB = 512
DEMO_VERSION = 1


def preset_config(preset: str) -> JanusConfig:
    """"tiny": the test model (16 image tokens each way). "demo": what the service serves without weights
    (384 px in and out, 576 image tokens, like the real model, but a few MB). "bench": the demo's transformer
    and token counts with a one-level VQ decoder (24 px images), so that, as in the real model, image decoding
    is a negligible share of a generation. "mid": a 0.3 B-parameter backbone where arithmetic, not per-op
    overhead, dominates a step."""
    if preset == "tiny":
        vision = VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4)
        hidden, inter, layers, heads, max_pos = 64, 128, 2, 4, 1024
        vq = VQConfig(image_token_size=256, n_embed=8, ch=32, ch_mult=[1, 1, 2], z_channels=64, num_res_blocks=1,
                      image_size=16)
    elif preset == "demo":
        vision = VisionConfig(image_size=384, patch_size=16, width=64, layers=2, heads=4)
        hidden, inter, layers, heads, max_pos = 128, 256, 2, 4, 2048
        vq = VQConfig(image_token_size=1024, n_embed=8, ch=32, ch_mult=[1, 1, 2, 2, 4], z_channels=64,
                      num_res_blocks=1, image_size=384)
    elif preset == "bench":
        vision = VisionConfig(image_size=384, patch_size=16, width=64, layers=2, heads=4)
        hidden, inter, layers, heads, max_pos = 128, 256, 2, 4, 2048
        vq = VQConfig(image_token_size=1024, n_embed=8, ch=32, ch_mult=[1], z_channels=32, num_res_blocks=0,
                      image_size=24)
    elif preset == "mid":
        vision = VisionConfig(image_size=384, patch_size=16, width=256, layers=4, heads=4)
        hidden, inter, layers, heads, max_pos = 1024, 2816, 16, 16, 2048
        vq = VQConfig(image_token_size=16384, n_embed=8, ch=32, ch_mult=[1], z_channels=32, num_res_blocks=0,
                      image_size=24)
    else:
        raise ValueError(f"unknown preset {preset!r}; expected 'tiny', 'demo', 'bench' or 'mid'")
    return JanusConfig(
        vision=vision,
        aligner=ProjectorConfig(input_dim=vision.width, n_embed=hidden),
        gen_vision=vq,
        gen_aligner=ProjectorConfig(input_dim=vq.n_embed, n_embed=hidden),
        gen_head=GenHeadConfig(n_embed=hidden, image_token_embed=hidden, image_token_size=vq.image_token_size),
        language=LanguageConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=heads, vocab_size=TOKENIZER_VOCAB,
                                max_position_embeddings=max_pos),
        name=f"janus-{preset}-random",
        random_weights=True,
    )


def random_weights(cfg: JanusConfig, seed: int) -> dict[str, np.ndarray]:
    """Checkpoint key -> float32 array in the published (torch) layout, including the keys serving skips."""
    from model.checkpoint.loader import build_lazy  # paddle import deferred: writing needs only shapes

    model = build_lazy(cfg)
    transposed = keys.transposed_names(model)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, param in sorted(model.named_parameters()):
        shape = list(param.shape)
        arr = _init(name, shape, rng)
        if name in transposed:
            arr = np.ascontiguousarray(arr.T)
        out[keys.to_checkpoint_name(name)] = arr
    out.update(_unused_weights(cfg, rng))
    return out


def _init(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1:
        if leaf == "bias":
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)  # norm scales
    if "embed_tokens" in name or "gen_embed" in name or "quantize.embedding" in name or "pos_embed" in name:
        return rng.standard_normal(shape).astype(np.float32)
    # Paddle Linear is [in, out]; Conv2D is [out, in, kh, kw].
    fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
    gain = 4.0 if name.endswith(("lm_head.weight", "vision_head.weight")) else 1.0
    return (gain / np.sqrt(fan_in) * rng.standard_normal(shape)).astype(np.float32)


def _unused_weights(cfg: JanusConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The keys the published files carry but serving does not use: the SigLIP attention-pool head (a
    representative part), the whole VQ encoder with quant_conv, and the quantizer's usage statistics."""
    width = cfg.vision.width
    shapes = {
        "vision_model.vision_tower.attn_pool.latent": [1, 1, width],
        "vision_model.vision_tower.attn_pool.q.weight": [width, width],
        "vision_model.vision_tower.attn_pool.q.bias": [width],
        "vision_model.vision_tower.attn_pool.kv.weight": [2 * width, width],
        "vision_model.vision_tower.attn_pool.proj.weight": [width, width],
        "vision_model.vision_tower.attn_pool.norm.weight": [width],
    }
    shapes |= vq_encoder_shapes(cfg.gen_vision)
    out = {name: (0.02 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
    out["gen_vision_model.quantize.codebook_used"] = np.zeros(65536, np.float32)
    return out


def vq_encoder_shapes(vq: VQConfig) -> dict[str, list[int]]:
    """The VQ-16 encoder and quant_conv, as LlamaGen lays them out (channels rise as resolution falls)."""
    shapes: dict[str, list[int]] = {}
    e = "gen_vision_model.encoder."

    def conv(name: str, out_ch: int, in_ch: int, k: int) -> None:
        shapes[name + ".weight"] = [out_ch, in_ch, k, k]
        shapes[name + ".bias"] = [out_ch]

    def norm(name: str, ch: int) -> None:
        shapes[name + ".weight"] = [ch]
        shapes[name + ".bias"] = [ch]

    def res(name: str, in_ch: int, out_ch: int) -> None:
        norm(name + ".norm1", in_ch)
        conv(name + ".conv1", out_ch, in_ch, 3)
        norm(name + ".norm2", out_ch)
        conv(name + ".conv2", out_ch, out_ch, 3)
        if in_ch != out_ch:
            conv(name + ".nin_shortcut", out_ch, in_ch, 1)

    def attn(name: str, ch: int) -> None:
        norm(name + ".norm", ch)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", ch, ch, 1)

    conv(e + "conv_in", vq.ch, 3, 3)
    levels = len(vq.ch_mult)
    block_in = vq.ch
    for level, mult in enumerate(vq.ch_mult):
        block_out = vq.ch * mult
        for r in range(vq.num_res_blocks):
            res(f"{e}conv_blocks.{level}.res.{r}", block_in, block_out)
            block_in = block_out
            if level == levels - 1:
                attn(f"{e}conv_blocks.{level}.attn.{r}", block_in)
        if level != levels - 1:
            conv(f"{e}conv_blocks.{level}.downsample.conv", block_in, block_in, 3)
    res(e + "mid.0", block_in, block_in)
    attn(e + "mid.1", block_in)
    res(e + "mid.2", block_in, block_in)
    norm(e + "norm_out", block_in)
    conv(e + "conv_out", vq.z_channels, block_in, 3)
    conv("gen_vision_model.quant_conv", vq.n_embed, vq.z_channels, 1)
    return shapes


def build_tiny_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0, dtype: str = "float32",
                          shards: int = 1, cfg: JanusConfig | None = None) -> Path:
    """Write a complete checkpoint folder. dtype "bfloat16" stores bf16 like the published files. cfg: a
    configuration to write instead of the preset's (a benchmark's shape)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or preset_config(preset)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    build_tiny_tokenizer(out, vocab_size=TOKENIZER_VOCAB)
    write_preprocessor_config(out, cfg.vision.image_size)
    write_processor_config(out, cfg.vision.num_tokens)
    tensors = {k: _stored(v, dtype) for k, v in random_weights(cfg, seed).items()}
    write_weights(out, tensors, shards)
    return out


def _stored(arr: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
    if dtype == "float32":
        return arr, "F32"
    if dtype == "bfloat16":
        bits = arr.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        return rounded.astype(np.uint16), "BF16"
    raise ValueError(f"unsupported checkpoint dtype {dtype!r}")


def write_weights(out: Path, tensors: dict[str, tuple[np.ndarray, str]], shards: int = 1) -> None:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus the index, as published."""
    if shards <= 1:
        safetensors_io.save(out / "model.safetensors", tensors, metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        file_name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        safetensors_io.save(out / file_name, {n: tensors[n] for n in part}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    total = sum(a.nbytes for a, _ in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def demo_checkpoint_dir() -> Path:
    """The random-weights checkpoint of the "demo" preset (Janus-Pro's image sizes, a few MB), built once into the
    cache folder (atomically, so concurrent starts are safe). Tests and benchmarks use it; the service falls back
    to it only when the trained demo model (`model.demo`) is missing from the installation."""
    target = cache_root() / f"demo-checkpoint-v{DEMO_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".demo-"))
    try:
        build_tiny_checkpoint(staging, preset="demo", seed=1234)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
