"""Names and layouts: published checkpoint keys <-> the Paddle network's parameter names."""

from __future__ import annotations

from paddle import nn

# Weights in the published files that serving never uses: the SigLIP attention-pool head, the VQ encoder side,
# and the quantizer's training statistics.
UNUSED_PREFIXES = (
    "vision_model.vision_tower.attn_pool.",
    "gen_vision_model.encoder.",
    "gen_vision_model.quant_conv.",
    "gen_vision_model.quantize.codebook_used",
)

_RENAMES = (("language_model.model.", "language_model.llama."),)


def is_unused(checkpoint_key: str) -> bool:
    return checkpoint_key.startswith(UNUSED_PREFIXES)


def to_paddle_name(checkpoint_key: str) -> str:
    for theirs, ours in _RENAMES:
        if checkpoint_key.startswith(theirs):
            return ours + checkpoint_key[len(theirs):]
    return checkpoint_key


def to_checkpoint_name(paddle_name: str) -> str:
    for theirs, ours in _RENAMES:
        if paddle_name.startswith(ours):
            return theirs + paddle_name[len(ours):]
    return paddle_name


def transposed_names(model: nn.Layer) -> set[str]:
    """Parameters stored [out, in] in the checkpoint but [in, out] in Paddle: Linear weights and the LM head."""
    names = {f"{prefix}.weight" for prefix, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    head = getattr(getattr(model, "language_model", None), "lm_head", None)
    if head is not None and not head.transpose_y:
        names.add("language_model.lm_head.weight")
    return names


def bf16_storable_names(model: nn.Layer) -> set[str]:
    """Parameters the CPU computes from bf16 storage (see `model.layer_ops`): the projections of the backbone, the
    vision encoder, the aligners and the heads (every Linear weight, the LM head) and the token embeddings. The VQ
    decoder, norms, biases and the small image-token embedding stay float32."""
    names = {name for name in transposed_names(model) if not name.startswith("gen_vision_model.")}
    embeddings = "language_model.llama.embed_tokens.weight"
    if embeddings in dict(model.named_parameters()):
        names.add(embeddings)
    return names


QUANTIZABLE_PREFIXES = ("language_model.", "gen_head.")
SCALE_SUFFIX = "_scale"  # `<layer>.weight` held as int8 has its scales under `<layer>.weight_scale`


def int8_names(model: nn.Layer) -> set[str]:
    """Weights held as int8 with JANUS_QUANTIZATION=int8: every projection of the language model (attention, MLP,
    the text head) and the generation head. Embeddings, norms, biases, the aligners, the vision encoder and the VQ
    decoder stay as they are."""
    return {name for name in transposed_names(model) if name.startswith(QUANTIZABLE_PREFIXES)}


def scale_name(weight_name: str) -> str:
    return weight_name + SCALE_SUFFIX
