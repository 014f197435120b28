"""Drives PaddleNLP's Llama layers over a static, slot-addressed KV cache.

PaddleNLP's own attention grows its cache by concatenation and cannot address slots, so the forward pass here uses
the Llama's weights, norms and MLPs as they are and does the attention itself: rotary embedding, a write of the
new keys/values into their slots, and attention over each row's valid history. `prefill` runs prompts into fresh
slots; `decode` advances the rows in slots 0..B-1 by one token each, attending through zero-copy views.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import paddle
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

from model.attention import decode_attention, prompt_attention
from model.config import LanguageConfig
from model.kv_cache import KVCache
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


class Backbone:
    def __init__(self, lm: LlamaForCausalLM, cfg: LanguageConfig) -> None:
        self.lm = lm
        self.cfg = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)

    def embed_tokens(self, ids: paddle.Tensor) -> paddle.Tensor:
        """ids [B, T] -> token embeddings [B, T, hidden]."""
        return embedding(self.lm.llama.embed_tokens, ids)

    def new_cache(self, slots: int, max_len: int, dtype: str, host_views: bool | None = None) -> KVCache:
        c = self.cfg
        return KVCache(c.num_hidden_layers, slots, max_len, c.num_key_value_heads, c.head_dim, dtype, host_views)

    def text_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return matmul_weight(hidden, self.lm.lm_head.weight, transpose_y=self.lm.lm_head.transpose_y)

    def prefill(self, embeds: paddle.Tensor, cache: KVCache, slots: list[int], token_mask: paddle.Tensor,
                positions: paddle.Tensor, last_only: bool = False) -> paddle.Tensor:
        """Run prompts (left-padded when ragged) into fresh slots.

        embeds [B, T, hidden]; token_mask [B, T] 1 for real tokens; positions [B, T] rotary positions.
        Returns final-normed hidden states [B, T, hidden] ([B, 1, hidden], the last position, with last_only); the
        slots' caches hold columns 0..T-1 afterwards.
        """
        B, T, _ = embeds.shape
        if cache.max_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds the KV cache length {cache.max_len}")
        mask = token_mask.numpy()
        starts = left_padding(mask)
        cache.start_prompt(slots, mask)
        rope = self.rotary.plan(positions.numpy(), embeds.dtype, self.cfg.num_attention_heads)

        def attend(layer: int, q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
            cache.write_prompt(layer, k, v)
            return prompt_attention(q, k, v, starts, causal=True)

        return self._layers(embeds, rope, attend, last_only)

    def decode(self, embeds: paddle.Tensor, cache: KVCache, lengths: list[int],
               positions: np.ndarray) -> paddle.Tensor:
        """One new token for each of the rows in slots 0..B-1 (row i is slot i).

        embeds [B, 1, hidden]; lengths[i] = the cache column row i's token goes to; positions [B] rotary positions.
        Returns final-normed hidden states [B, 1, hidden].
        """
        B = embeds.shape[0]
        if max(lengths) >= cache.max_len:
            raise ValueError(f"sequence of {max(lengths) + 1} tokens exceeds the KV cache length {cache.max_len}")
        cache.start_step(lengths)
        valid, attended = cache.valid[:B], max(lengths) + 1
        rope = self.rotary.plan(np.asarray(positions).reshape(B, 1), embeds.dtype, self.cfg.num_attention_heads)

        def attend(layer: int, q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
            cache.write_step(layer, k, v)
            keys, values = cache.view(layer, B)  # [B, KVH, max_len, D], no copy
            return decode_attention(q, keys, values, valid, attended)

        return self._layers(embeds, rope, attend)

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


def left_padding(token_mask: np.ndarray) -> np.ndarray:
    """token_mask [B, T] (zeros, then ones) -> each row's first real token [B]."""
    real = token_mask.astype(bool)
    starts = real.shape[1] - real.sum(axis=1)
    if not (real == (np.arange(real.shape[1])[None] >= starts[:, None])).all():
        raise ValueError("token_mask must be left padding: zeros, then ones to the end of each row")
    return starts.astype(np.int64)
