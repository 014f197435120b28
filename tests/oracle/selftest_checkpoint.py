"""Write a random tiny Janus checkpoint in the published DeepSeek layout (and optionally sample requests).

Runs in the oracle venv (torch + safetensors) so that the oracle can be exercised end to end without the project's
own checkpoint builder:

    python selftest_checkpoint.py OUT_DIR [--seed 0] [--requests REQUESTS.npz]

OUT_DIR gets `config.json` (every architecture value stated in `params`) and `model.safetensors` with DeepSeek's
original key names, including the keys serving never uses (SigLIP's `attn_pool`, the VQ encoder, `quant_conv`,
`codebook_used`), so that strict loading is exercised too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 4.0,
          "layer_norm_eps": 1e-6, "select_layer": -1}
VQ = {"image_token_size": 64, "n_embed": 8, "ch": 32, "ch_mult": [1, 2], "z_channels": 64, "num_res_blocks": 1,
      "image_size": 8, "codebook_l2_norm": True}
HIDDEN = 64
LANGUAGE = {"hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "hidden_act": "silu"}
ALIGNER = {"input_dim": VISION["width"], "n_embed": HIDDEN, "depth": 2, "projector_type": "mlp_gelu"}
GEN_ALIGNER = {"input_dim": VQ["n_embed"], "n_embed": HIDDEN, "depth": 2, "projector_type": "mlp_gelu"}
GEN_HEAD = {"n_embed": HIDDEN, "image_token_embed": HIDDEN, "image_token_size": VQ["image_token_size"]}

# Token ids of the sample requests (a real tokenizer would supply them).
BOS, EOS, PAD = 1, 2, 3
IMAGE_PLACEHOLDER, BEGIN_OF_IMAGE, END_OF_IMAGE = 500, 501, 502


def config_json() -> dict[str, Any]:
    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "_name_or_path": "janus-oracle-selftest",
        "random_weights": True,
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"model_name": "siglip_large_patch16_384", "select_feature": "same", **VISION}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": ALIGNER},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": VQ},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner", "params": GEN_ALIGNER},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": GEN_HEAD},
        "language_config": {"model_type": "llama", **LANGUAGE},
    }


class _Weights:
    """Random tensors with roughly unit-variance activations, so that logits are well separated."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)

    def linear(self, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
        self.tensors[f"{name}.weight"] = self._randn(out_dim, in_dim) * in_dim**-0.5
        if bias:
            self.tensors[f"{name}.bias"] = self._randn(out_dim) * 0.1

    def conv(self, name: str, out_ch: int, in_ch: int, kernel: int) -> None:
        fan_in = in_ch * kernel * kernel
        self.tensors[f"{name}.weight"] = self._randn(out_ch, in_ch, kernel, kernel) * fan_in**-0.5
        self.tensors[f"{name}.bias"] = self._randn(out_ch) * 0.1

    def norm(self, name: str, dim: int, bias: bool = True) -> None:
        self.tensors[f"{name}.weight"] = 1.0 + self._randn(dim) * 0.1
        if bias:
            self.tensors[f"{name}.bias"] = self._randn(dim) * 0.1

    def raw(self, name: str, *shape: int, scale: float = 1.0) -> None:
        self.tensors[name] = self._randn(*shape) * scale


def _vision(w: _Weights) -> None:
    width, prefix = VISION["width"], "vision_model.vision_tower"
    mlp = int(width * VISION["mlp_ratio"])
    w.conv(f"{prefix}.patch_embed.proj", width, 3, VISION["patch_size"])
    w.raw(f"{prefix}.pos_embed", 1, (VISION["image_size"] // VISION["patch_size"]) ** 2, width, scale=0.5)
    for i in range(VISION["layers"]):
        block = f"{prefix}.blocks.{i}"
        w.norm(f"{block}.norm1", width)
        w.linear(f"{block}.attn.qkv", 3 * width, width)
        w.linear(f"{block}.attn.proj", width, width)
        w.norm(f"{block}.norm2", width)
        w.linear(f"{block}.mlp.fc1", mlp, width)
        w.linear(f"{block}.mlp.fc2", width, mlp)
    w.norm(f"{prefix}.norm", width)
    # timm's MAP pooling head: in the published checkpoint, never run by Janus.
    pool = f"{prefix}.attn_pool"
    w.raw(f"{pool}.latent", 1, 1, width)
    w.linear(f"{pool}.q", width, width)
    w.linear(f"{pool}.kv", 2 * width, width)
    w.linear(f"{pool}.proj", width, width)
    w.norm(f"{pool}.norm", width)
    w.linear(f"{pool}.mlp.fc1", mlp, width)
    w.linear(f"{pool}.mlp.fc2", width, mlp)


def _projector(w: _Weights, name: str, params: dict[str, Any]) -> None:
    w.linear(f"{name}.layers.0", params["n_embed"], params["input_dim"])
    for i in range(1, params["depth"]):
        w.linear(f"{name}.layers.{2 * i}", params["n_embed"], params["n_embed"])


def _res_block(w: _Weights, name: str, in_ch: int, out_ch: int) -> None:
    w.norm(f"{name}.norm1", in_ch)
    w.conv(f"{name}.conv1", out_ch, in_ch, 3)
    w.norm(f"{name}.norm2", out_ch)
    w.conv(f"{name}.conv2", out_ch, out_ch, 3)
    if in_ch != out_ch:
        w.conv(f"{name}.nin_shortcut", out_ch, in_ch, 1)


def _attn_block(w: _Weights, name: str, ch: int) -> None:
    w.norm(f"{name}.norm", ch)
    for part in ("q", "k", "v", "proj_out"):
        w.conv(f"{name}.{part}", ch, ch, 1)


def _mid(w: _Weights, name: str, ch: int) -> None:
    _res_block(w, f"{name}.0", ch, ch)
    _attn_block(w, f"{name}.1", ch)
    _res_block(w, f"{name}.2", ch, ch)


def _vq(w: _Weights) -> None:
    """LlamaGen's VQ-16 layout: encoder, quant_conv, codebook, post_quant_conv, decoder."""
    ch, mult, z, n_res, levels = VQ["ch"], VQ["ch_mult"], VQ["z_channels"], VQ["num_res_blocks"], len(VQ["ch_mult"])
    enc = "gen_vision_model.encoder"
    w.conv(f"{enc}.conv_in", ch, 3, 3)
    block_in = ch
    for level in range(levels):
        block_out = ch * mult[level]
        for j in range(n_res):
            _res_block(w, f"{enc}.conv_blocks.{level}.res.{j}", block_in, block_out)
            block_in = block_out
            if level == levels - 1:
                _attn_block(w, f"{enc}.conv_blocks.{level}.attn.{j}", block_in)
        if level != levels - 1:
            w.conv(f"{enc}.conv_blocks.{level}.downsample.conv", block_in, block_in, 3)
    _mid(w, f"{enc}.mid", block_in)
    w.norm(f"{enc}.norm_out", block_in)
    w.conv(f"{enc}.conv_out", z, block_in, 3)

    w.conv("gen_vision_model.quant_conv", VQ["n_embed"], z, 1)
    w.raw("gen_vision_model.quantize.embedding.weight", VQ["image_token_size"], VQ["n_embed"])
    w.tensors["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    w.conv("gen_vision_model.post_quant_conv", z, VQ["n_embed"], 1)

    dec = "gen_vision_model.decoder"
    block_in = ch * mult[-1]
    w.conv(f"{dec}.conv_in", block_in, z, 3)
    _mid(w, f"{dec}.mid", block_in)
    # Decoder levels run from the lowest resolution up; attention only there.
    for i, level in enumerate(reversed(range(levels))):
        block_out = ch * mult[level]
        for j in range(n_res + 1):
            _res_block(w, f"{dec}.conv_blocks.{i}.res.{j}", block_in, block_out)
            block_in = block_out
            if level == levels - 1:
                _attn_block(w, f"{dec}.conv_blocks.{i}.attn.{j}", block_in)
        if level != 0:
            w.conv(f"{dec}.conv_blocks.{i}.upsample.conv", block_in, block_in, 3)
    w.norm(f"{dec}.norm_out", block_in)
    w.conv(f"{dec}.conv_out", 3, block_in, 3)


def _language(w: _Weights) -> None:
    hidden, inter = LANGUAGE["hidden_size"], LANGUAGE["intermediate_size"]
    head_dim = hidden // LANGUAGE["num_attention_heads"]
    kv = LANGUAGE["num_key_value_heads"] * head_dim
    w.raw("language_model.model.embed_tokens.weight", LANGUAGE["vocab_size"], hidden)
    for i in range(LANGUAGE["num_hidden_layers"]):
        layer = f"language_model.model.layers.{i}"
        w.linear(f"{layer}.self_attn.q_proj", hidden, hidden, bias=False)
        w.linear(f"{layer}.self_attn.k_proj", kv, hidden, bias=False)
        w.linear(f"{layer}.self_attn.v_proj", kv, hidden, bias=False)
        w.linear(f"{layer}.self_attn.o_proj", hidden, hidden, bias=False)
        w.linear(f"{layer}.mlp.gate_proj", inter, hidden, bias=False)
        w.linear(f"{layer}.mlp.up_proj", inter, hidden, bias=False)
        w.linear(f"{layer}.mlp.down_proj", hidden, inter, bias=False)
        w.norm(f"{layer}.input_layernorm", hidden, bias=False)
        w.norm(f"{layer}.post_attention_layernorm", hidden, bias=False)
    w.norm("language_model.model.norm", hidden, bias=False)
    w.linear("language_model.lm_head", LANGUAGE["vocab_size"], hidden, bias=False)


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    w = _Weights(seed)
    _vision(w)
    _projector(w, "aligner", ALIGNER)
    _vq(w)
    _projector(w, "gen_aligner", GEN_ALIGNER)
    w.linear("gen_head.output_mlp_projector", GEN_HEAD["image_token_embed"], GEN_HEAD["n_embed"])
    w.linear("gen_head.vision_head", GEN_HEAD["image_token_size"], GEN_HEAD["image_token_embed"])
    w.raw("gen_embed.weight", VQ["image_token_size"], VQ["n_embed"])
    _language(w)
    return {name: t.contiguous() for name, t in w.tensors.items()}


def write_checkpoint(out_dir: Path, seed: int = 0) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_json(), indent=2) + "\n")
    save_file(random_weights(seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def sample_requests(seed: int = 0) -> dict[str, np.ndarray]:
    """Two left-padded understanding rows with one image each, a generation prompt and two VQ token grids."""
    rng = np.random.default_rng(seed)
    n_image = (VISION["image_size"] // VISION["patch_size"]) ** 2
    image = [BEGIN_OF_IMAGE] + [IMAGE_PLACEHOLDER] * n_image + [END_OF_IMAGE]
    rows = [
        [BOS, *rng.integers(10, 400, 5).tolist(), *image, *rng.integers(10, 400, 4).tolist()],
        [BOS, *rng.integers(10, 400, 2).tolist(), *image, *rng.integers(10, 400, 1).tolist()],
    ]
    width = max(len(r) for r in rows)
    input_ids = np.array([[PAD] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    size = VISION["image_size"]
    vq_tokens = (VQ["image_size"] // 2 ** (len(VQ["ch_mult"]) - 1)) ** 2
    return {
        "und_input_ids": input_ids,
        "und_attention_mask": mask,
        "und_pixel_values": rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32),
        "image_token_id": np.array(IMAGE_PLACEHOLDER, dtype=np.int64),
        "und_max_new_tokens": np.array(6, dtype=np.int64),
        "eos_token_id": np.array(EOS, dtype=np.int64),
        "pad_token_id": np.array(PAD, dtype=np.int64),
        "gen_input_ids": np.array([[BOS, *rng.integers(10, 400, 6).tolist(), BEGIN_OF_IMAGE]], dtype=np.int64),
        "gen_pad_id": np.array(PAD, dtype=np.int64),
        "gen_cfg_weight": np.array(5.0, dtype=np.float64),
        "vq_tokens": rng.integers(0, VQ["image_token_size"], (2, vq_tokens)).astype(np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=Path, help="also write sample requests for all three groups here")
    args = parser.parse_args()
    write_checkpoint(args.out_dir, args.seed)
    if args.requests:
        np.savez(args.requests, **sample_requests(args.seed))


if __name__ == "__main__":
    main()
