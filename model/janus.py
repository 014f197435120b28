"""The whole Janus-Pro network and the inference primitives the engine and the reference loops build on.

Sub-layer names mirror the published checkpoint's top-level keys, so loading is a rename-free mapping (apart from
PaddleNLP's `llama.` prefix and the [in, out] layout of Paddle's Linear weights).
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddlenlp.transformers import LlamaForCausalLM

from model.backbone import Backbone, llama_config
from model.config import JanusConfig
from model.kv_cache import PagedKVCache, RowBatch
from model.projector import GenHead, MlpProjector
from model.siglip import VisionTower
from model.vq_decoder import VQDecoder


class JanusModel(nn.Layer):
    def __init__(self, cfg: JanusConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_model = VisionTower(cfg.vision)
        self.aligner = MlpProjector(cfg.aligner)
        self.gen_vision_model = VQDecoder(cfg.gen_vision)
        self.gen_aligner = MlpProjector(cfg.gen_aligner)
        self.gen_head = GenHead(cfg.gen_head)
        self.gen_embed = nn.Embedding(cfg.gen_vision.image_token_size, cfg.gen_vision.n_embed)
        self.language_model = LlamaForCausalLM(llama_config(cfg.language))
        self.backbone = Backbone(self.language_model, cfg.language)

    @property
    def dtype(self) -> paddle.dtype:
        return self.gen_embed.weight.dtype

    # understanding inputs

    def encode_images(self, pixels: paddle.Tensor) -> paddle.Tensor:
        """pixels [N, 3, S, S] float -> aligned features [N, vision tokens, hidden]."""
        return self.aligner(self.vision_model(pixels.astype(self.dtype)))

    def embed_text(self, ids: paddle.Tensor) -> paddle.Tensor:
        """ids [B, T] -> embeddings [B, T, hidden]."""
        return self.backbone.embed_tokens(ids)

    def embed_prompt(self, ids: paddle.Tensor, image_features: paddle.Tensor | None, image_id: int) -> paddle.Tensor:
        """Token embeddings with the image-placeholder positions (in order) replaced by image features.

        ids [B, T]; image_features [N, tokens, hidden] for the N images in reading order, or [positions, hidden]
        (a prompt that starts inside an image: the features of the placeholders it has, in order).
        """
        embeds = self.embed_text(ids)
        is_image = (ids == image_id).flatten()
        count = int(is_image.astype("int64").sum().item())
        wanted = 0 if image_features is None else int(np.prod(image_features.shape[:-1]))
        if count != wanted:
            raise ValueError(f"prompt has {count} image placeholder tokens but {wanted} image features were given")
        if count == 0:
            return embeds
        B, T, C = embeds.shape
        positions = paddle.nonzero(is_image).flatten()
        features = image_features.reshape([-1, C]).astype(embeds.dtype)
        flat = paddle.scatter(embeds.reshape([B * T, C]), positions, features)
        return flat.reshape([B, T, C])

    # generation inputs and heads

    def embed_image_tokens(self, tokens: paddle.Tensor) -> paddle.Tensor:
        """image token ids [...] -> backbone input embeddings [..., hidden]."""
        return self.gen_aligner(self.gen_embed(tokens))

    def text_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return self.backbone.text_logits(hidden)

    def image_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return self.gen_head(hidden)

    # backbone

    def new_cache(self, num_blocks: int, block_size: int = 16, host_views: bool | None = None) -> PagedKVCache:
        """A pool of `num_blocks` blocks of `block_size` positions. host_views=False forces the cache's device code
        path on the CPU too (tests)."""
        return self.backbone.new_cache(num_blocks, block_size, str(self.dtype).replace("paddle.", ""), host_views)

    def extend(self, embeds: paddle.Tensor, cache: PagedKVCache, rows: RowBatch,
               last_only: bool = False) -> paddle.Tensor:
        """New positions for paged rows: embeds [B, T, hidden] (left-padded per rows.pad) -> hidden [B, T, hidden]
        (with last_only [B, 1, hidden], the last position, which is all that sampling the next token needs)."""
        return self.backbone.extend(embeds, cache, rows, last_only)

    def causal_forward(self, embeds: paddle.Tensor) -> paddle.Tensor:
        """Whole sequences without a cache (training): embeds [B, T, hidden] -> hidden [B, T, hidden]."""
        return self.backbone.causal_forward(embeds)

    # image decoding

    def decode_pixels(self, tokens: paddle.Tensor) -> paddle.Tensor:
        """tokens [B, image tokens] -> decoder output [B, 3, S, S] in about [-1, 1]."""
        return self.gen_vision_model(tokens)

    def decode_images(self, tokens: paddle.Tensor) -> np.ndarray:
        """tokens [B, image tokens] -> uint8 RGB images [B, S, S, 3]."""
        return pixels_to_uint8(self.decode_pixels(tokens).astype("float32").transpose([0, 2, 3, 1]).numpy())


def pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Decoder output (about [-1, 1], overshooting on both sides) -> bytes: [-1, 1] maps onto [0, 255], the rest is
    clipped, and the fraction is cut off (not rounded: 0 -> 127), as DeepSeek's script and transformers do."""
    return np.clip((pixels + 1.0) / 2.0 * 255.0, 0, 255).astype(np.uint8)
