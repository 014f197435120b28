"""The published Janus-Pro-1B / 7B architectures build lazily with exactly the parameter shapes their files hold."""

from __future__ import annotations

import math

import pytest

from model.checkpoint import keys
from model.checkpoint.loader import build_lazy
from model.config import published_config


def published_shapes(hidden: int, intermediate: int, layers: int) -> dict[str, list[int]]:
    """Every key the serving network reads from a published checkpoint, with its torch-layout shape."""
    shapes: dict[str, list[int]] = {}
    tower = "vision_model.vision_tower."
    shapes |= {tower + "patch_embed.proj.weight": [1024, 3, 16, 16], tower + "patch_embed.proj.bias": [1024],
               tower + "pos_embed": [1, 576, 1024], tower + "norm.weight": [1024], tower + "norm.bias": [1024]}
    for b in range(24):
        p = f"{tower}blocks.{b}."
        shapes |= {p + "norm1.weight": [1024], p + "norm1.bias": [1024], p + "norm2.weight": [1024],
                   p + "norm2.bias": [1024], p + "attn.qkv.weight": [3072, 1024], p + "attn.qkv.bias": [3072],
                   p + "attn.proj.weight": [1024, 1024], p + "attn.proj.bias": [1024],
                   p + "mlp.fc1.weight": [4096, 1024], p + "mlp.fc1.bias": [4096],
                   p + "mlp.fc2.weight": [1024, 4096], p + "mlp.fc2.bias": [1024]}
    for name, width in (("aligner", 1024), ("gen_aligner", 8)):
        shapes |= {f"{name}.layers.0.weight": [hidden, width], f"{name}.layers.0.bias": [hidden],
                   f"{name}.layers.2.weight": [hidden, hidden], f"{name}.layers.2.bias": [hidden]}
    shapes |= {"gen_head.output_mlp_projector.weight": [hidden, hidden], "gen_head.output_mlp_projector.bias": [hidden],
               "gen_head.vision_head.weight": [16384, hidden], "gen_head.vision_head.bias": [16384],
               "gen_embed.weight": [16384, 8]}
    lm = "language_model."
    shapes |= {lm + "model.embed_tokens.weight": [102400, hidden], lm + "model.norm.weight": [hidden],
               lm + "lm_head.weight": [102400, hidden]}
    for i in range(layers):
        p = f"{lm}model.layers.{i}."
        shapes |= {p + f"self_attn.{x}_proj.weight": [hidden, hidden] for x in "qkvo"}
        shapes |= {p + "mlp.gate_proj.weight": [intermediate, hidden], p + "mlp.up_proj.weight": [intermediate, hidden],
                   p + "mlp.down_proj.weight": [hidden, intermediate], p + "input_layernorm.weight": [hidden],
                   p + "post_attention_layernorm.weight": [hidden]}
    shapes |= _vq_decoder_shapes()
    return shapes


def _vq_decoder_shapes() -> dict[str, list[int]]:
    g = "gen_vision_model."
    shapes = {g + "quantize.embedding.weight": [16384, 8], g + "post_quant_conv.weight": [256, 8, 1, 1],
              g + "post_quant_conv.bias": [256]}

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
        for x in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{x}", ch, ch, 1)

    d = g + "decoder."
    conv(d + "conv_in", 512, 256, 3)
    res(d + "mid.0", 512, 512)
    attn(d + "mid.1", 512)
    res(d + "mid.2", 512, 512)
    # lowest resolution first: channel multipliers 4, 2, 2, 1, 1 of 128
    block_in = 512
    for level, width in enumerate([512, 256, 256, 128, 128]):
        for r in range(3):
            res(f"{d}conv_blocks.{level}.res.{r}", block_in, width)
            block_in = width
            if level == 0:
                attn(f"{d}conv_blocks.{level}.attn.{r}", width)
        if level != 4:
            conv(f"{d}conv_blocks.{level}.upsample.conv", width, width, 3)
    norm(d + "norm_out", 128)
    conv(d + "conv_out", 3, 128, 3)
    return shapes


@pytest.mark.parametrize(("size", "hidden", "intermediate", "layers"),
                         [("1B", 2048, 5632, 24), ("7B", 4096, 11008, 30)])
def test_published_architecture_has_every_checkpoint_shape(size, hidden, intermediate, layers):
    model = build_lazy(published_config(size))
    transposed = keys.transposed_names(model)
    ours = {}
    for name, param in model.named_parameters():
        shape = list(param.shape)
        ours[keys.to_checkpoint_name(name)] = shape[::-1] if name in transposed else shape
    expected = published_shapes(hidden, intermediate, layers)
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}


def test_published_1b_parameter_count():
    model = build_lazy(published_config("1B"))
    total = sum(math.prod(p.shape) for p in model.parameters())
    # 1.65 B in the language model, 0.30 B SigLIP, the rest aligners, heads and the VQ decoder.
    assert 2.0e9 < total < 2.1e9
