"""Reference outputs for a Janus / Janus-Pro checkpoint from Hugging Face transformers' implementation.

Runs in its own virtual environment (torch + transformers; see requirements.txt), never beside Paddle, and talks
through files only:

    python hf_janus_oracle.py --checkpoint DIR --requests IN.npz --out OUT.npz

DIR holds `config.json` in the published DeepSeek layout (sub-configs `{cls, params}` plus `language_config`, every
architecture value optionally stated in `params`) and the weights under DeepSeek's original key names
(`model.safetensors`, a sharded safetensors index, or `pytorch_model*.bin`). The weights are renamed to the
transformers layout and loaded strictly: every transformers parameter must be filled, and any checkpoint key that is
neither mapped nor known to be unused is an error.

Request groups (each optional; only the groups present are computed):

understanding
    in:  und_input_ids int64 [B, T] (tokenized, images expanded, left-padded), und_attention_mask int64 [B, T],
         und_pixel_values float32 [N, 3, S, S] (optional: text-only prompts need none), image_token_id int64,
         und_max_new_tokens int64, eos_token_id int64, pad_token_id int64
    out: image_features float32 [N, n_tokens, hidden] (after the aligner; only with pixel values),
         und_logits float32 [B, T, vocab] (zero at padded positions, where no implementation agrees),
         und_greedy_ids int64 [B, und_max_new_tokens] (plain argmax at every step: EOS neither stops the
         continuation nor is suppressed, so compare up to and including the first EOS)
generation
    in:  gen_input_ids int64 [1, T] (the conditional prompt, ending with <begin_of_image>), gen_pad_id int64,
         gen_cfg_weight float
    out: gen_cond_logits, gen_uncond_logits, gen_guided_logits float32 [image_token_size] for the first image token,
         gen_greedy_tokens int64 [n_image_tokens] (argmax of the guided logits at every step, the chosen token
         fed to both rows through gen_embed + gen_aligner; from transformers' image-mode generate when it applies,
         i.e. cfg_weight > 1, else from the same loop written over its modules). cfg_weight == 1 makes the guided
         logits exactly the conditional ones.
chat prompt (needs only DIR/tokenizer.json: no weights)
    in:  chat_text uint8 [bytes] (UTF-8: a conversation as the reference chat template writes it, without the
         system prompt), chat_num_images int64, chat_num_image_tokens int64
    out: chat_input_ids int64 [T]: transformers' JanusProcessor (default system prompt on, text mode) on that text
         and as many images, with the checkpoint's tokenizer.json
VQ decoding
    in:  vq_tokens int64 [b, n]
    out: vq_pixels float32 [b, 3, H, W] (decoder output, before clipping to [-1, 1]),
         vq_images uint8 [b, H, W, 3] (the image processor's `postprocess` of vq_pixels: the final pictures)
image preprocessing (needs only DIR/preprocessor_config.json: no config.json, no weights)
    in:  pre_image_<i> uint8 [bytes] for i = 0..N-1 (each an encoded image file),
         pre_sizes int64 [K] (optional: square sizes to process at instead of the config's image_size; every
         other setting comes from the config)
    out: pre_pixel_values_<S> float32 [N, 3, S, S] for each size S: each file opened with PIL and converted to RGB
         by PIL (DeepSeek's image loading, which drops any alpha channel; transformers' processor converts nothing
         by default and rejects anything but 3 channels), then transformers' PIL-backed Janus image processor

Everything runs in float32 on CPU with a fixed seed and nothing is fetched from a hub.
"""

from __future__ import annotations

import os

# Set before transformers is imported: it reads these once. Nothing here may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration, LlamaConfig
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil


class OracleError(RuntimeError):
    """A problem with the checkpoint or the requests (reported on stderr, exit status 2)."""


# ---------------------------------------------------------------------------------------------------------------
# config.json (published DeepSeek layout) -> transformers' JanusConfig
# ---------------------------------------------------------------------------------------------------------------

# The published config.json states only a few values; the rest are implied by `siglip_large_patch16_384` and
# `VQ-16`. These are the implied values, used wherever `params` does not state one.
_VISION_DEFAULTS: dict[str, Any] = {"image_size": 384, "patch_size": 16, "width": 1024, "layers": 24, "heads": 16,
                                    "mlp_ratio": 4.0, "layer_norm_eps": 1e-6, "select_layer": -1}
_VQ_DEFAULTS: dict[str, Any] = {"image_token_size": 16384, "n_embed": 8, "ch": 128, "ch_mult": [1, 1, 2, 2, 4],
                                "z_channels": 256, "num_res_blocks": 2, "image_size": 384, "codebook_l2_norm": True}
_PROJECTOR_DEFAULTS: dict[str, Any] = {"depth": 2, "projector_type": "mlp_gelu"}
_GEN_HEAD_DEFAULTS: dict[str, Any] = {"n_embed": 2048, "image_token_embed": 2048, "image_token_size": 16384}
_LANGUAGE_DEFAULTS: dict[str, Any] = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
                                      "num_attention_heads": 16, "num_key_value_heads": None, "vocab_size": 102400,
                                      "max_position_embeddings": 16384, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                                      "hidden_act": "silu"}


@dataclass(frozen=True, slots=True)
class Architecture:
    """The few derived numbers the weight mapping and the request handling need."""

    vision_layers_used: int
    aligner_depth: int
    gen_aligner_depth: int
    vq_tokens: int
    image_token_size: int


def _params(raw: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    section = raw.get(key)
    if section is None:
        raise OracleError(f"config.json has no {key!r}")
    given = {k: v for k, v in dict(section.get("params", {})).items() if v is not None}
    return {**defaults, **given}


def build_config(raw: dict[str, Any], image_token_id: int | None) -> tuple[JanusConfig, Architecture]:
    vision = _params(raw, "vision_config", _VISION_DEFAULTS)
    aligner = _params(raw, "aligner_config", _PROJECTOR_DEFAULTS)
    vq = _params(raw, "gen_vision_config", _VQ_DEFAULTS)
    gen_aligner = _params(raw, "gen_aligner_config", _PROJECTOR_DEFAULTS)
    gen_head = _params(raw, "gen_head_config", _GEN_HEAD_DEFAULTS)
    language = {**_LANGUAGE_DEFAULTS, **{k: v for k, v in raw.get("language_config", {}).items() if v is not None}}
    if language["num_key_value_heads"] is None:
        language["num_key_value_heads"] = language["num_attention_heads"]
    hidden = int(language["hidden_size"])

    for name, proj in (("aligner_config", aligner), ("gen_aligner_config", gen_aligner)):
        if proj["projector_type"] != "mlp_gelu":
            raise OracleError(f"{name}: projector_type {proj['projector_type']!r} is not supported")
    if language.get("rope_scaling"):
        raise OracleError("language_config.rope_scaling is set; the oracle only models plain rotary embeddings")
    if not vq["codebook_l2_norm"]:
        # transformers always L2-normalises codebook entries on decode, as the published VQ-16 does.
        raise OracleError("gen_vision_config.params.codebook_l2_norm=false cannot be expressed in transformers")
    # transformers uses one width (`projection_dim`) for both the generation aligner's output and the generation
    # head's middle layer; DeepSeek's layout could set them apart.
    if int(gen_aligner["n_embed"]) != int(gen_head["image_token_embed"]):
        raise OracleError("transformers needs gen_aligner n_embed == gen_head image_token_embed, got "
                          f"{gen_aligner['n_embed']} and {gen_head['image_token_embed']}")
    checks = {
        "aligner_config.params.input_dim": (aligner.get("input_dim"), vision["width"]),
        "aligner_config.params.n_embed": (aligner.get("n_embed"), hidden),
        "gen_aligner_config.params.input_dim": (gen_aligner.get("input_dim"), vq["n_embed"]),
        "gen_aligner_config.params.n_embed": (gen_aligner.get("n_embed"), hidden),
        "gen_head_config.params.n_embed": (gen_head["n_embed"], hidden),
        "gen_head_config.params.image_token_size": (gen_head["image_token_size"], vq["image_token_size"]),
    }
    for name, (found, expected) in checks.items():
        if found is None or int(found) != int(expected):
            raise OracleError(f"config.json: {name} is {found}, but the architecture needs {expected}")

    layers, select = int(vision["layers"]), int(vision["select_layer"])
    # DeepSeek builds the ViT with only the blocks up to `select_layer` and still applies the final norm, so a
    # shorter transformers encoder is the same network.
    used_layers = layers + select + 1 if select < 0 else select
    if not 0 < used_layers <= layers:
        raise OracleError(f"vision select_layer {select} is out of range for {layers} layers")
    ch_mult = [int(m) for m in vq["ch_mult"]]
    upsample = 2 ** (len(ch_mult) - 1)
    if int(vq["image_size"]) % upsample:
        raise OracleError(f"VQ image_size {vq['image_size']} is not a multiple of the x{upsample} upsampling")
    grid = int(vq["image_size"]) // upsample

    vision_config = JanusVisionConfig(
        hidden_size=int(vision["width"]),
        num_hidden_layers=used_layers,
        num_attention_heads=int(vision["heads"]),
        image_size=int(vision["image_size"]),
        patch_size=int(vision["patch_size"]),
        mlp_ratio=float(vision["mlp_ratio"]),
        layer_norm_eps=float(vision["layer_norm_eps"]),
        hidden_act="gelu",  # exact (erf) GELU, as timm's nn.GELU in DeepSeek's SigLIP and MlpProjector
        attention_bias=True,
        use_qk_norm=False,
        projection_dim=int(aligner["n_embed"]),
        depth=int(aligner["depth"]),
        # transformers' image-mode generate runs this many steps: the VQ grid, not the SigLIP grid.
        num_image_tokens=grid * grid,
    )
    vq_config = JanusVQVAEConfig(
        embed_dim=int(vq["n_embed"]),
        num_embeddings=int(vq["image_token_size"]),
        double_latent=False,
        latent_channels=int(vq["z_channels"]),
        in_channels=3,
        out_channels=3,
        base_channels=int(vq["ch"]),
        channel_multiplier=ch_mult,
        num_res_blocks=int(vq["num_res_blocks"]),
        projection_dim=int(gen_aligner["n_embed"]),
        num_hidden_layers=int(gen_aligner["depth"]),
        image_token_embed_dim=int(gen_head["n_embed"]),
        hidden_act="gelu",
    )
    text_config = LlamaConfig(
        vocab_size=int(language["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(language["intermediate_size"]),
        num_hidden_layers=int(language["num_hidden_layers"]),
        num_attention_heads=int(language["num_attention_heads"]),
        num_key_value_heads=int(language["num_key_value_heads"]),
        max_position_embeddings=int(language["max_position_embeddings"]),
        rms_norm_eps=float(language["rms_norm_eps"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(language["rope_theta"])},
        hidden_act=str(language["hidden_act"]),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config = JanusConfig(
        vision_config=vision_config,
        vq_config=vq_config,
        text_config=text_config,
        image_token_id=image_token_id if image_token_id is not None else 100581,
        tie_word_embeddings=False,
    )
    # JanusConfig ties the VQ latent grid to the SigLIP patch grid; they coincide for the published models but a
    # checkpoint may choose them independently, and decoding needs the VQ one.
    config.vq_config.num_patches = grid
    arch = Architecture(vision_layers_used=used_layers, aligner_depth=int(aligner["depth"]),
                        gen_aligner_depth=int(gen_aligner["depth"]),
                        vq_tokens=grid * grid, image_token_size=int(vq["image_token_size"]))
    return config, arch


# ---------------------------------------------------------------------------------------------------------------
# DeepSeek key names -> transformers key names
# ---------------------------------------------------------------------------------------------------------------

# Weights the serving network never runs (SigLIP's pooling head, the VQ usage counter): present in the published
# checkpoints, absent from transformers' model.
_UNUSED = (
    re.compile(r"vision_model\.vision_tower\.attn_pool\..*"),
    re.compile(r"gen_vision_model\.quantize\.codebook_used"),
)

_VQ_BLOCK = r"(?:norm[12]|conv[12]|nin_shortcut|conv_shortcut|norm|[qkv]|proj_out)\.(?:weight|bias)"
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"vision_model\.vision_tower\.patch_embed\.proj\.(weight|bias)",
     r"model.vision_model.embeddings.patch_embedding.\1"),
    (r"vision_model\.vision_tower\.norm\.(weight|bias)", r"model.vision_model.post_layernorm.\1"),
    (r"vision_model\.vision_tower\.blocks\.(\d+)\.norm([12])\.(weight|bias)",
     r"model.vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (r"vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     r"model.vision_model.encoder.layers.\1.self_attn.projection_layer.\2"),
    (r"vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)",
     r"model.vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"gen_head\.output_mlp_projector\.(weight|bias)", r"model.generation_head.proj_out.\1"),
    (r"gen_head\.vision_head\.(weight|bias)", r"model.generation_head.vision_head.\1"),
    (r"gen_embed\.weight", r"model.generation_embeddings.weight"),
    (r"gen_vision_model\.quantize\.embedding\.weight", r"model.vqmodel.quantize.embedding.weight"),
    (r"gen_vision_model\.(quant_conv|post_quant_conv)\.(weight|bias)", r"model.vqmodel.\1.\2"),
    (r"gen_vision_model\.(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(weight|bias)",
     r"model.vqmodel.\1.\2.\3"),
    # LlamaGen keeps the middle as a list [res, attn, res]; transformers names the three.
    (rf"gen_vision_model\.(encoder|decoder)\.mid\.0\.({_VQ_BLOCK})", r"model.vqmodel.\1.mid.block_1.\2"),
    (rf"gen_vision_model\.(encoder|decoder)\.mid\.1\.({_VQ_BLOCK})", r"model.vqmodel.\1.mid.attn_1.\2"),
    (rf"gen_vision_model\.(encoder|decoder)\.mid\.2\.({_VQ_BLOCK})", r"model.vqmodel.\1.mid.block_2.\2"),
    # Both list their levels in execution order (the decoder's level 0 is the lowest resolution), so the level
    # index carries over unchanged.
    (rf"gen_vision_model\.encoder\.conv_blocks\.(\d+)\.res\.(\d+)\.({_VQ_BLOCK})",
     r"model.vqmodel.encoder.down.\1.block.\2.\3"),
    (rf"gen_vision_model\.decoder\.conv_blocks\.(\d+)\.res\.(\d+)\.({_VQ_BLOCK})",
     r"model.vqmodel.decoder.up.\1.block.\2.\3"),
    (rf"gen_vision_model\.encoder\.conv_blocks\.(\d+)\.attn\.(\d+)\.({_VQ_BLOCK})",
     r"model.vqmodel.encoder.down.\1.attn.\2.\3"),
    (rf"gen_vision_model\.decoder\.conv_blocks\.(\d+)\.attn\.(\d+)\.({_VQ_BLOCK})",
     r"model.vqmodel.decoder.up.\1.attn.\2.\3"),
    (r"gen_vision_model\.encoder\.conv_blocks\.(\d+)\.downsample\.conv\.(weight|bias)",
     r"model.vqmodel.encoder.down.\1.downsample.conv.\2"),
    (r"gen_vision_model\.decoder\.conv_blocks\.(\d+)\.upsample\.conv\.(weight|bias)",
     r"model.vqmodel.decoder.up.\1.upsample.conv.\2"),
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight", r"lm_head.weight"),
))
_POS_EMBED = "vision_model.vision_tower.pos_embed"
_QKV = re.compile(r"vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
_BLOCK = re.compile(r"vision_model\.vision_tower\.blocks\.(\d+)\.")
_PROJECTOR = re.compile(r"(aligner|gen_aligner)\.layers\.(\d+)\.(weight|bias)")


def map_state_dict(original: dict[str, torch.Tensor], arch: Architecture) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename DeepSeek's keys to transformers'; returns the mapped weights and the keys nothing accounts for."""
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []

    def put(name: str, value: torch.Tensor) -> None:
        if name in mapped:
            raise OracleError(f"two checkpoint keys map to {name}")
        mapped[name] = value.to(torch.float32).contiguous()

    for key, value in original.items():
        if any(p.fullmatch(key) for p in _UNUSED):
            continue
        block = _BLOCK.match(key)
        if block and int(block.group(1)) >= arch.vision_layers_used:
            continue  # blocks past `select_layer` are never run
        if key == _POS_EMBED:
            put("model.vision_model.embeddings.position_embedding.weight", value.reshape(-1, value.shape[-1]))
            continue
        if m := _QKV.fullmatch(key):
            # timm's fused projection is [q; k; v] along the output dimension.
            layer, kind = m.groups()
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                put(f"model.vision_model.encoder.layers.{layer}.self_attn.{name}_proj.{kind}", part)
            continue
        if m := _PROJECTOR.fullmatch(key):
            # DeepSeek's nn.Sequential interleaves GELUs: Linear layers sit at even indices 0, 2, 4, ...
            owner, index, kind = m.group(1), int(m.group(2)), m.group(3)
            depth = arch.aligner_depth if owner == "aligner" else arch.gen_aligner_depth
            target = "model.aligner" if owner == "aligner" else "model.generation_aligner"
            if index % 2 or index // 2 >= depth:
                unknown.append(key)
            elif index == 0:
                put(f"{target}.fc1.{kind}", value)
            else:
                put(f"{target}.hidden_layers.{index // 2 - 1}.{kind}", value)
            continue
        for pattern, replacement in _RENAMES:
            if pattern.fullmatch(key):
                put(pattern.sub(replacement, key), value)
                break
        else:
            unknown.append(key)
    return mapped, unknown


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    single = checkpoint / "model.safetensors"
    if single.is_file():
        return load_file(single)
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_bin)):
        index = checkpoint / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(loader(checkpoint / shard))
            return weights
    single_bin = checkpoint / "pytorch_model.bin"
    if single_bin.is_file():
        return _load_bin(single_bin)
    raise OracleError(f"no weights in {checkpoint} (model.safetensors, an index, or pytorch_model.bin)")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(checkpoint: Path, image_token_id: int | None) -> tuple[JanusForConditionalGeneration, Architecture]:
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise OracleError(f"no config.json in {checkpoint}")
    config, arch = build_config(json.loads(config_path.read_text()), image_token_id)
    # Eager attention is the textbook softmax(QK^T)V with an additive mask: fully padded query rows stay finite.
    model = JanusForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32)
    mapped, unknown = map_state_dict(read_weights(checkpoint), arch)
    expected = set(model.state_dict())
    missing = sorted(expected - set(mapped))
    unexpected = sorted(unknown + [k for k in mapped if k not in expected])
    if missing or unexpected:
        raise OracleError("checkpoint does not match the architecture in config.json:\n"
                          f"  transformers parameters left unfilled ({len(missing)}): {missing[:20]}\n"
                          f"  checkpoint keys not accounted for ({len(unexpected)}): {unexpected[:20]}")
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise OracleError(f"checkpoint weights do not fit the architecture in config.json: {err}") from None
    if model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        raise OracleError("lm_head is tied to embed_tokens; Janus keeps them separate")
    model.eval()
    return model, arch


# ---------------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------------

def _scalar(requests: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in requests:
        raise OracleError(f"request {key!r} is missing")
    value = np.asarray(requests[key])
    if value.size != 1:
        raise OracleError(f"request {key!r} must be a scalar, got shape {value.shape}")
    return value.reshape(())


def _long(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def understanding(model: JanusForConditionalGeneration, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    input_ids = _long(requests["und_input_ids"])
    if "und_attention_mask" not in requests:
        raise OracleError("request 'und_attention_mask' is missing")
    mask = _long(requests["und_attention_mask"])
    if input_ids.ndim != 2 or mask.shape != input_ids.shape:
        raise OracleError(f"und_input_ids {tuple(input_ids.shape)} and und_attention_mask {tuple(mask.shape)} "
                          "must both be [B, T]")
    max_new = int(_scalar(requests, "und_max_new_tokens"))
    pad_id = int(_scalar(requests, "pad_token_id"))
    image_token_id = int(_scalar(requests, "image_token_id"))
    pixels = requests.get("und_pixel_values")
    pixel_values = None if pixels is None or len(pixels) == 0 else torch.from_numpy(
        np.ascontiguousarray(pixels, dtype=np.float32))
    n_placeholders = int((input_ids == image_token_id).sum())
    if pixel_values is None and n_placeholders:
        raise OracleError(f"{n_placeholders} image placeholders but no und_pixel_values")

    out: dict[str, np.ndarray] = {}
    if pixel_values is not None:
        features = model.model.get_image_features(pixel_values).pooler_output
        if n_placeholders != features.shape[0] * features.shape[1]:
            raise OracleError(f"{n_placeholders} image placeholders for {features.shape[0]} images of "
                              f"{features.shape[1]} tokens each")
        out["image_features"] = features.numpy().astype(np.float32)

    # Left padding: real tokens count positions from 0, as DeepSeek's and transformers' generate do.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask,
                   position_ids=position_ids).logits
    out["und_logits"] = (logits * mask[..., None]).numpy().astype(np.float32)

    if max_new > 0:
        # No EOS: every step is a plain argmax, so the continuation is exactly max_new tokens long.
        generation_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new,
                                             min_new_tokens=0, eos_token_id=None, pad_token_id=pad_id,
                                             bos_token_id=None, top_k=None, top_p=None, temperature=None)
        images = {} if pixel_values is None else {"pixel_values": pixel_values}
        sequences = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=generation_config,
                                   **images)
        greedy = sequences[:, input_ids.shape[1]:]
        if greedy.shape[1] != max_new:
            raise OracleError(f"generate returned {greedy.shape[1]} tokens instead of {max_new}")
        out["und_greedy_ids"] = greedy.numpy().astype(np.int64)
    else:
        out["und_greedy_ids"] = np.zeros((input_ids.shape[0], 0), dtype=np.int64)
    return out


def unconditional_ids(cond_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    uncond = cond_ids.clone()
    uncond[:, 1:-1] = pad_id
    return uncond


def _guide(cond: torch.Tensor, uncond: torch.Tensor, cfg_weight: float) -> torch.Tensor:
    if cfg_weight == 1:
        # Exactly the conditional logits, as a server that skips the unconditional rows computes them (the formula
        # below is off by rounding).
        return cond.clone()
    # Same association as transformers' ClassifierFreeGuidanceLogitsProcessor and DeepSeek's script.
    return uncond + (cond - uncond) * cfg_weight


def _image_loop(model: JanusForConditionalGeneration, cond_ids: torch.Tensor, pad_id: int, cfg_weight: float,
                n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy image tokens over transformers' own modules: rows [cond, uncond], one shared KV cache.

    Returns the first step's (cond, uncond) logits and all chosen tokens.
    """
    rows = torch.cat([cond_ids, unconditional_ids(cond_ids, pad_id)])
    embeds = model.get_input_embeddings()(rows)
    backbone = model.model.language_model
    cache = None
    first: tuple[torch.Tensor, torch.Tensor] | None = None
    tokens = torch.empty(n_tokens, dtype=torch.long)
    for step in range(n_tokens):
        output = backbone(inputs_embeds=embeds, cache=cache, use_cache=True)
        cache = output.cache
        logits = model.model.generation_head(output.last_hidden_state[:, -1])
        if first is None:
            first = (logits[0].clone(), logits[1].clone())
        token = _guide(logits[0], logits[1], cfg_weight).argmax()
        tokens[step] = token
        embeds = model.prepare_embeddings_for_image_generation(token.repeat(2, 1))
    assert first is not None
    return first[0], first[1], tokens


def generation(model: JanusForConditionalGeneration, arch: Architecture,
               requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    cond_ids = _long(requests["gen_input_ids"])
    if cond_ids.ndim != 2 or cond_ids.shape[0] != 1 or cond_ids.shape[1] < 2:
        raise OracleError(f"gen_input_ids must be [1, T] with T >= 2, got {tuple(cond_ids.shape)}")
    pad_id = int(_scalar(requests, "gen_pad_id"))
    cfg_weight = float(_scalar(requests, "gen_cfg_weight"))

    # First-step logits from a plain prefill of both rows.
    cond, uncond, loop_tokens = _image_loop(model, cond_ids, pad_id, cfg_weight, 1)
    out = {
        "gen_cond_logits": cond.numpy().astype(np.float32),
        "gen_uncond_logits": uncond.numpy().astype(np.float32),
        "gen_guided_logits": _guide(cond, uncond, cfg_weight).numpy().astype(np.float32),
    }

    bos_id, boi_id = int(cond_ids[0, 0]), int(cond_ids[0, -1])
    inner = cond_ids[0, 1:-1]
    # transformers' image mode blanks every position that is neither its bos nor its boi id, which equals "all but
    # the first and the last" only when those ids do not recur inside the prompt; it also only supports cfg > 1.
    if cfg_weight > 1 and not bool(((inner == bos_id) | (inner == boi_id)).any()):
        generation_config = GenerationConfig(do_sample=False, num_beams=1, guidance_scale=cfg_weight,
                                             bos_token_id=bos_id, pad_token_id=pad_id, eos_token_id=None,
                                             generation_kwargs={"boi_token_id": boi_id},
                                             top_k=None, top_p=None, temperature=None)
        tokens = model.generate(input_ids=cond_ids, attention_mask=torch.ones_like(cond_ids),
                                generation_config=generation_config, generation_mode="image")[0]
    else:
        _, _, tokens = _image_loop(model, cond_ids, pad_id, cfg_weight, arch.vq_tokens)
    if tokens.shape != (arch.vq_tokens,) or int(tokens[0]) != int(loop_tokens[0]):
        raise OracleError(f"image-token generation disagrees with its own first step: {tokens[:4].tolist()} vs "
                          f"{loop_tokens.tolist()}")
    out["gen_greedy_tokens"] = tokens.numpy().astype(np.int64)
    return out


def vq_decode(model: JanusForConditionalGeneration, arch: Architecture, checkpoint: Path,
              requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tokens = _long(requests["vq_tokens"])
    if tokens.ndim != 2 or tokens.shape[1] != arch.vq_tokens:
        raise OracleError(f"vq_tokens must be [b, {arch.vq_tokens}], got {tuple(tokens.shape)}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= arch.image_token_size:
        raise OracleError(f"vq_tokens must lie in [0, {arch.image_token_size})")
    pixels = model.model.vqmodel.decode(tokens).numpy().astype(np.float32)
    # transformers' own post-processing (undo the normalisation, scale to 0..255, clip, cast), as its image
    # generation example uses it; PIL images come back channels-last.
    pictures = image_processor(checkpoint).postprocess(list(pixels), return_tensors="PIL.Image.Image")
    images = np.stack([np.asarray(picture) for picture in pictures["pixel_values"]])
    return {"vq_pixels": pixels, "vq_images": images.astype(np.uint8)}


def image_processor(checkpoint: Path, size: int | None = None) -> JanusImageProcessorPil:
    """transformers' Janus image processor configured from DeepSeek's preprocessor_config.json (at another square
    size if `size` is given).

    The PIL backend: DeepSeek resizes PIL images (torchvision hands them to PIL), and the torchvision backend's
    tensor resize is a different filter implementation.
    """
    path = checkpoint / "preprocessor_config.json"
    if not path.is_file():
        raise OracleError(f"no preprocessor_config.json in {checkpoint}")
    raw = json.loads(path.read_text())
    size = int(raw.get("image_size", 384)) if size is None else size
    mean = [float(m) for m in raw.get("image_mean", [0.48145466, 0.4578275, 0.40821073])]
    std = [float(s) for s in raw.get("image_std", [0.26862954, 0.26130258, 0.27577711])]
    processor = JanusImageProcessorPil(size={"height": size, "width": size}, min_size=int(raw.get("min_size", 14)),
                                       image_mean=mean, image_std=std,
                                       rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                                       do_normalize=bool(raw.get("do_normalize", True)))
    background = raw.get("background_color")
    if background is not None and tuple(int(c) for c in background) != tuple(processor.background_color):
        # transformers derives the padding colour from the mean and has no setting for it.
        raise OracleError(f"background_color {background} differs from the mean's {processor.background_color}, "
                          "which transformers cannot express")
    return processor


def preprocess(checkpoint: Path, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    count = sum(1 for key in requests if key.startswith("pre_image_"))
    keys = [f"pre_image_{i}" for i in range(count)]
    if any(key not in requests for key in keys):
        raise OracleError(f"image keys must be pre_image_0..pre_image_{count - 1}, got "
                          f"{sorted(k for k in requests if k.startswith('pre_image_'))}")
    images = [Image.open(io.BytesIO(np.asarray(requests[key], dtype=np.uint8).tobytes())).convert("RGB")
              for key in keys]
    sizes = [int(s) for s in np.atleast_1d(requests["pre_sizes"])] if "pre_sizes" in requests else [None]
    out: dict[str, np.ndarray] = {}
    for size in sizes:
        processor = image_processor(checkpoint, size)
        processed = processor(images, return_tensors=None)["pixel_values"]
        out[f"pre_pixel_values_{processor.size.height}"] = np.stack(processed).astype(np.float32)
    return out


def chat_prompt(checkpoint: Path, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from transformers import PreTrainedTokenizerFast
    from transformers.models.janus.processing_janus import JanusProcessor

    text = np.asarray(requests["chat_text"], dtype=np.uint8).tobytes().decode("utf-8")
    special = json.loads((checkpoint / "special_tokens_map.json").read_text())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(checkpoint / "tokenizer.json"), bos_token=_content(special["bos_token"]),
        eos_token=_content(special["eos_token"]),
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    processor = JanusProcessor(JanusImageProcessorPil(), tokenizer, use_default_system_prompt=True,
                               num_image_tokens=int(_scalar(requests, "chat_num_image_tokens")))
    images = [Image.new("RGB", (16, 16))] * int(_scalar(requests, "chat_num_images"))
    ids = processor(text=text, images=images or None, return_tensors=None)["input_ids"][0]
    return {"chat_input_ids": np.asarray(ids, dtype=np.int64)}


def _content(token: Any) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def run(checkpoint: Path, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    results: dict[str, np.ndarray] = {}
    if any(key.startswith("pre_image_") for key in requests):
        results.update(preprocess(checkpoint, requests))
    if "chat_text" in requests:
        results.update(chat_prompt(checkpoint, requests))
    if not any(key in requests for key in ("und_input_ids", "gen_input_ids", "vq_tokens")):
        return results  # preprocessing and the tokenizer alone need no network
    image_token_id = int(_scalar(requests, "image_token_id")) if "image_token_id" in requests else None
    model, arch = load_model(checkpoint, image_token_id)
    with torch.inference_mode():
        if "und_input_ids" in requests:
            results.update(understanding(model, requests))
        if "gen_input_ids" in requests:
            results.update(generation(model, arch, requests))
        if "vq_tokens" in requests:
            results.update(vq_decode(model, arch, checkpoint, requests))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (DeepSeek layout)")
    parser.add_argument("--requests", type=Path, required=True, help="input .npz")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    args = parser.parse_args(argv)
    try:
        with np.load(args.requests, allow_pickle=False) as npz:
            requests = {key: npz[key] for key in npz.files}
        results = run(args.checkpoint, requests)
    except (OracleError, FileNotFoundError) as err:
        print(f"hf_janus_oracle: {err}", file=sys.stderr)
        return 2
    np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
