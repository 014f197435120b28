"""Drives PaddleNLP's Llama layers over a static, slot-addressed KV cache.

PaddleNLP's own attention grows its cache by concatenation and cannot address slots, so the forward pass here uses
the Llama's weights, norms and MLPs as they are and does the attention itself: rotary embedding, a write of the
new keys/values into their slots, and attention over each row's valid history. `prefill` runs prompts into fresh
slots; `decode` advances the rows in slots 0..B-1 by one token each, attending through zero-copy views.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

from model.attention import decode_attention, prompt_attention
from model.config import LanguageConfig
from model.kv_cache import KVCache


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


class RotaryTable:
    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        inv_freq = 1.0 / (theta ** (paddle.arange(0, head_dim, 2, dtype="int64").astype("float32") / head_dim))
        freqs = paddle.outer(paddle.arange(max_positions, dtype="float32"), inv_freq)  # [P, D/2]
        emb = paddle.concat([freqs, freqs], axis=-1)  # [P, D]
        self.cos = emb.cos()
        # rotate_half(x) * sin == roll(x, D/2) * signed_sin: one op instead of slice, slice, negate, concat
        self.sin = paddle.concat([-freqs.sin(), freqs.sin()], axis=-1)

    def lookup(self, positions: paddle.Tensor, dtype: paddle.dtype,
               heads: int) -> tuple[paddle.Tensor, paddle.Tensor]:
        """positions [B, T] -> cos, sin [B, T, heads, D], materialised once per forward: Paddle's CPU kernels
        broadcast slowly, and every layer multiplies queries and keys by these."""
        flat = positions.flatten()
        B, T = positions.shape
        D = self.cos.shape[-1]
        cos = paddle.index_select(self.cos, flat).reshape([B, T, 1, D]).astype(dtype)
        sin = paddle.index_select(self.sin, flat).reshape([B, T, 1, D]).astype(dtype)
        return paddle.expand(cos, [B, T, heads, D]).clone(), paddle.expand(sin, [B, T, heads, D]).clone()


def _rms_norm(norm: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """PaddleNLP's LlamaRMSNorm arithmetic without its per-call AMP guards (a third of a small step's time)."""
    x32 = x if x.dtype == paddle.float32 else x.astype("float32")
    normed = x32 * paddle.rsqrt((x32 * x32).mean(axis=-1, keepdim=True) + norm.variance_epsilon)
    return normed.astype(x.dtype) * norm.weight


def _mlp(mlp: paddle.nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    return mlp.down_proj(F.swiglu(mlp.gate_proj(x), mlp.up_proj(x)))


def _rope(x: paddle.Tensor, cos: paddle.Tensor, signed_sin: paddle.Tensor) -> paddle.Tensor:
    return x * cos + paddle.roll(x, x.shape[-1] // 2, axis=-1) * signed_sin


class Backbone:
    def __init__(self, lm: LlamaForCausalLM, cfg: LanguageConfig) -> None:
        self.lm = lm
        self.cfg = cfg
        self.rotary = RotaryTable(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)

    @property
    def embed_tokens(self) -> paddle.nn.Embedding:
        return self.lm.llama.embed_tokens

    def new_cache(self, slots: int, max_len: int, dtype: str) -> KVCache:
        c = self.cfg
        return KVCache(c.num_hidden_layers, slots, max_len, c.num_key_value_heads, c.head_dim, dtype)

    def text_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return paddle.matmul(hidden, self.lm.lm_head.weight, transpose_y=self.lm.lm_head.transpose_y)

    def _qkv(self, layer: paddle.nn.Layer, h: paddle.Tensor, cos: paddle.Tensor,
             sin: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        B, T, _ = h.shape
        H, KVH, D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        attn = layer.self_attn
        x = _rms_norm(layer.input_layernorm, h)
        q = attn.q_proj(x).reshape([B, T, H, D])
        k = attn.k_proj(x).reshape([B, T, KVH, D])
        v = attn.v_proj(x).reshape([B, T, KVH, D])
        if KVH == H:
            return _rope(q, cos, sin), _rope(k, cos, sin), v
        return _rope(q, cos, sin), _rope(k, cos[:, :, :KVH], sin[:, :, :KVH]), v

    def prefill(self, embeds: paddle.Tensor, cache: KVCache, slots: list[int], token_mask: paddle.Tensor,
                positions: paddle.Tensor) -> paddle.Tensor:
        """Run prompts (left-padded when ragged) into fresh slots.

        embeds [B, T, hidden]; token_mask [B, T] 1 for real tokens; positions [B, T] rotary positions.
        Returns final-normed hidden states [B, T, hidden]; the slots' caches hold columns 0..T-1 afterwards.
        """
        B, T, _ = embeds.shape
        if cache.max_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds the KV cache length {cache.max_len}")
        D = self.cfg.head_dim
        starts = left_padding(token_mask.numpy())
        slot_ids = paddle.to_tensor(slots, dtype="int64")
        columns = paddle.expand(paddle.arange(T, dtype="int64").unsqueeze(0), [B, T])
        cache.clear(slots)
        cache.mark_valid(slot_ids, columns, token_mask)
        write_index = cache.entry_index(slot_ids, columns).flatten()  # [B*KVH*T]

        cos, sin = self.rotary.lookup(positions, embeds.dtype, self.cfg.num_attention_heads)
        h = embeds
        for i, layer in enumerate(self.lm.llama.layers):
            q, k, v = self._qkv(layer, h, cos, sin)
            cache.write(i, write_index, k.transpose([0, 2, 1, 3]).reshape([-1, D]),
                        v.transpose([0, 2, 1, 3]).reshape([-1, D]))
            h = h + layer.self_attn.o_proj(prompt_attention(q, k, v, starts, causal=True))
            h = h + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, h))
        return _rms_norm(self.lm.llama.norm, h)

    def decode(self, embeds: paddle.Tensor, cache: KVCache, lengths: list[int],
               positions: paddle.Tensor) -> paddle.Tensor:
        """One new token for each of the rows in slots 0..B-1 (row i is slot i).

        embeds [B, 1, hidden]; lengths[i] = the cache column row i's token goes to; positions [B, 1].
        Returns final-normed hidden states [B, 1, hidden].
        """
        B = embeds.shape[0]
        if max(lengths) >= cache.max_len:
            raise ValueError(f"sequence of {max(lengths) + 1} tokens exceeds the KV cache length {cache.max_len}")
        H, D = self.cfg.num_attention_heads, self.cfg.head_dim
        slot_ids = paddle.arange(B, dtype="int64")
        columns = paddle.to_tensor(lengths, dtype="int64").unsqueeze(1)
        cache.mark_valid(slot_ids, columns, paddle.ones([B, 1], "float32"))
        write_index = cache.entry_index(slot_ids, columns).flatten()  # [B*KVH]
        valid, attended = cache.valid[:B], max(lengths) + 1

        cos, sin = self.rotary.lookup(positions, embeds.dtype, H)
        h = embeds
        for i, layer in enumerate(self.lm.llama.layers):
            q, k, v = self._qkv(layer, h, cos, sin)
            cache.write(i, write_index, k.reshape([-1, D]), v.reshape([-1, D]))
            keys, values = cache.view(i, B)  # [B, KVH, max_len, D], no copy
            h = h + layer.self_attn.o_proj(decode_attention(q, keys, values, valid, attended))
            h = h + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, h))
        return _rms_norm(self.lm.llama.norm, h)


def left_padding(token_mask: np.ndarray) -> np.ndarray:
    """token_mask [B, T] (zeros, then ones) -> each row's first real token [B]."""
    real = token_mask.astype(bool)
    starts = real.shape[1] - real.sum(axis=1)
    if not (real == (np.arange(real.shape[1])[None] >= starts[:, None])).all():
        raise ValueError("token_mask must be left padding: zeros, then ones to the end of each row")
    return starts.astype(np.int64)
