"""Drives PaddleNLP's Llama layers over a paged KV cache.

PaddleNLP's own attention grows its cache by concatenation and cannot address blocks, so the forward pass here uses
the Llama's weights, norms and MLPs as they are and does the attention itself: rotary embedding, a write of the
new keys/values into the rows' blocks, and attention over each row's history read through its block table.
`extend` is the one forward: a prompt (after whatever prefix of it is cached) or a decode step of one position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import paddle
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

from model import native_layers
from model.attention import paged_attention, prompt_attention
from model.config import LanguageConfig
from model.kv_cache import PagedKVCache, RowBatch
from model.layer_ops import Rotary, RotaryPlan, add_rms_norm, embedding, linear, matmul_weight, rms_norm, swiglu


def llama_config(cfg: LanguageConfig) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        # The fused CPU kernels ignore the padding mask; keep the plain paths.
        use_flash_attention=False,
        use_fused_rms_norm=False,
        use_fused_rope=False,
    )


def share_rotary_tables(lm: LlamaForCausalLM) -> None:
    """One rotary table for every layer of PaddleNLP's Llama instead of one each.

    Each of its attention layers builds float32 cos and sin tables of max_position_embeddings x head_dim: 16 MiB a
    layer at Janus-Pro's 16,384 positions, 384 MiB over the 1B's 24 layers and 480 MiB over the 7B's 30, all
    holding the same values. The forward here never reads them (`Rotary` computes its own); PaddleNLP's forward,
    which the reference loops run (`model.reference`), does, so they stay, once.
    """
    layers = lm.llama.layers
    first = layers[0].self_attn.rotary_emb
    for layer in layers[1:]:
        layer.self_attn.rotary_emb = first


class Backbone:
    def __init__(self, lm: LlamaForCausalLM, cfg: LanguageConfig) -> None:
        self.lm = lm
        self.cfg = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        share_rotary_tables(lm)

    def embed_tokens(self, ids: paddle.Tensor) -> paddle.Tensor:
        """ids [B, T] -> token embeddings [B, T, hidden]."""
        return embedding(self.lm.llama.embed_tokens, ids)

    def new_cache(self, num_blocks: int, block_size: int, dtype: str,
                  host_views: bool | None = None) -> PagedKVCache:
        c = self.cfg
        return PagedKVCache(c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, dtype,
                            host_views)

    def text_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        if self.lm.lm_head.weight.dtype == paddle.int8:  # JANUS_QUANTIZATION=int8
            return linear(self.lm.lm_head, hidden)
        return matmul_weight(hidden, self.lm.lm_head.weight, transpose_y=self.lm.lm_head.transpose_y)

    def extend(self, embeds: paddle.Tensor, cache: PagedKVCache, rows: RowBatch,
               last_only: bool = False) -> paddle.Tensor:
        """Append positions to paged rows: a prompt (or what of it is not cached yet), or one decode step (T = 1).

        embeds [B, T, hidden], left-padded per `rows.pad`; the rows' tables must already hold blocks for every
        new position. Returns final-normed hidden states [B, T, hidden] ([B, 1, hidden], the last position, with
        last_only). Padding columns are neither written nor attended.
        """
        B, T, _ = embeds.shape
        lengths = rows.lengths(T)
        if (lengths > rows.tables.shape[1] * cache.block_size).any():
            raise ValueError(f"rows of up to {int(lengths.max())} positions need more blocks than their tables hold")
        if int(lengths.max()) > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence of {int(lengths.max())} tokens exceeds the model's context of "
                             f"{self.cfg.max_position_embeddings}")
        cache.start(rows, T)
        rope = self.rotary.plan(rows.positions(T), embeds.dtype, self.cfg.num_attention_heads)
        hidden = native_layers.forward(self.lm, self.cfg, embeds, cache, rows, rope.positions,
                                       (self.rotary.half_cos, self.rotary.half_sin), last_only)
        if hidden is not None:  # a few positions a row, all of it kernels: without the checks of each call
            return hidden

        def attend(layer: int, q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
            cache.write(layer, k, v)
            return paged_attention(q, cache.keys[layer], cache.values[layer], rows)

        return self._layers(embeds, rope, attend, last_only)

    def causal_forward(self, embeds: paddle.Tensor) -> paddle.Tensor:
        """Whole sequences from position 0, each position attending to itself and those before it, without a KV
        cache: the forward that training differentiates (with the CPU kernels off, every op has a gradient).
        embeds [B, T, hidden] -> final-normed hidden states [B, T, hidden]."""
        B, T, _ = embeds.shape
        rope = self.rotary.plan(np.tile(np.arange(T), (B, 1)), embeds.dtype, self.cfg.num_attention_heads)
        return self._layers(embeds, rope, lambda _, q, k, v: prompt_attention(q, k, v, None, causal=True))

    def _layers(self, embeds: paddle.Tensor, rope: RotaryPlan,
                attend: Callable[[int, paddle.Tensor, paddle.Tensor, paddle.Tensor], paddle.Tensor],
                last_only: bool = False) -> paddle.Tensor:
        """Every decoder layer, then the final norm. Each residual add is fused with the norm that follows it.

        last_only: the caller needs the last position alone. Every layer's keys and values still cover all
        positions (they fill the cache), but after the last layer's attention nothing else does: its output
        projection, MLP and the final norm then run on one position per row."""
        B, T, _ = embeds.shape
        H, KVH, D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        layers = self.lm.llama.layers
        h, x = embeds, rms_norm(embeds, layers[0].input_layernorm)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            q = rope.apply(linear(attn.q_proj, x).reshape([B, T, H, D]))
            k = rope.apply(linear(attn.k_proj, x).reshape([B, T, KVH, D]))
            v = linear(attn.v_proj, x).reshape([B, T, KVH, D])
            attended = attend(i, q, k, v)
            if last_only and i == len(layers) - 1:
                attended, h = attended[:, -1:].contiguous(), h[:, -1:].contiguous()
            h, x = add_rms_norm(h, linear(attn.o_proj, attended), layer.post_attention_layernorm)
            mlp = layer.mlp
            mlp_out = linear(mlp.down_proj, swiglu(linear(mlp.gate_proj, x), linear(mlp.up_proj, x)))
            after = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.lm.llama.norm
            h, x = add_rms_norm(h, mlp_out, after)
        return x
