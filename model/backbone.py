"""Drives PaddleNLP's Llama layers over a static, slot-addressed KV cache.

PaddleNLP's own attention grows its cache by concatenation and cannot address slots, so the forward pass here uses
the Llama's weights, norms and MLPs as they are and does the attention itself: rotary embedding, a write of the
new keys/values into their slots, and attention over each row's valid history. One call handles prefill
(many new tokens per row) and decode (one per row) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn.functional as F
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

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


@dataclass(slots=True)
class StepInput:
    """Where a chunk of new tokens goes: one row per sequence, T new tokens each (left-padded when ragged)."""

    slots: list[int]  # cache slot of each row
    starts: list[int]  # cache column of each row's first new token
    token_mask: paddle.Tensor  # [B, T] 1 for real tokens, 0 for left padding
    positions: paddle.Tensor  # [B, T] int64 rotary positions


class RotaryTable:
    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        inv_freq = 1.0 / (theta ** (paddle.arange(0, head_dim, 2, dtype="int64").astype("float32") / head_dim))
        freqs = paddle.outer(paddle.arange(max_positions, dtype="float32"), inv_freq)  # [P, D/2]
        emb = paddle.concat([freqs, freqs], axis=-1)  # [P, D]
        self.cos = emb.cos()
        self.sin = emb.sin()

    def lookup(self, positions: paddle.Tensor, dtype: paddle.dtype) -> tuple[paddle.Tensor, paddle.Tensor]:
        """positions [B, T] -> cos, sin [B, T, 1, D]."""
        flat = positions.flatten()
        shape = [*positions.shape, 1, self.cos.shape[-1]]
        cos = paddle.index_select(self.cos, flat).reshape(shape).astype(dtype)
        sin = paddle.index_select(self.sin, flat).reshape(shape).astype(dtype)
        return cos, sin


def _rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


def _attention(q: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """q [B, T, H, D], keys/values [B, K, H, D], bias [B, 1, T, K] -> [B, T, H*D]."""
    B, T, H, D = q.shape
    scores = paddle.matmul(q.transpose([0, 2, 1, 3]), keys.transpose([0, 2, 1, 3]), transpose_y=True)
    probs = F.softmax((scores * (D**-0.5) + bias).astype("float32"), axis=-1).astype(values.dtype)
    out = paddle.matmul(probs, values.transpose([0, 2, 1, 3]))  # [B, H, T, D]
    return out.transpose([0, 2, 1, 3]).reshape([B, T, H * D])


def _decode_attention(q: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor,
                      bias: paddle.Tensor) -> paddle.Tensor:
    """One query per row. Written as broadcast multiply-and-sum: batched matmuls of [1, D] x [D, K] per head run
    one tiny GEMM each on CPU and cost several times more than these two fused reductions."""
    B, _, H, D = q.shape
    scores = (q * keys).sum(axis=-1) * (D**-0.5) + bias.reshape([B, -1, 1])  # [B, K, H]
    probs = F.softmax(scores.astype("float32"), axis=1).astype(values.dtype)
    return (probs.unsqueeze(-1) * values).sum(axis=1).reshape([B, 1, H * D])


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

    def forward(self, embeds: paddle.Tensor, cache: KVCache, step: StepInput) -> paddle.Tensor:
        """embeds [B, T, hidden] -> final-normed hidden states [B, T, hidden]; writes the chunk's keys/values."""
        B, T, _ = embeds.shape
        H, KVH, D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        key_len = max(step.starts) + T
        if key_len > cache.max_len:
            raise ValueError(f"sequence of {key_len} tokens exceeds the KV cache length {cache.max_len}")
        slots = paddle.to_tensor(step.slots, dtype="int64")
        columns = paddle.to_tensor(step.starts, dtype="int64").unsqueeze(1) + paddle.arange(T, dtype="int64")
        write_index = cache.flat_index(slots, columns).flatten()  # [B*T]
        key_columns = paddle.arange(key_len, dtype="int64")
        read_index = cache.flat_index(slots, paddle.expand(key_columns, [B, key_len])).flatten()  # [B*K]
        cache.mark_valid(write_index, step.token_mask.flatten())
        key_valid = paddle.index_select(cache.valid, read_index).reshape([B, 1, key_len]) > 0

        # A query sees earlier valid columns of its own row, and always itself (keeps padding rows finite).
        causal = key_columns.reshape([1, 1, key_len]) <= columns.unsqueeze(2)  # [B, T, K]
        itself = key_columns.reshape([1, 1, key_len]) == columns.unsqueeze(2)
        allowed = paddle.logical_and(causal, paddle.logical_or(key_valid, itself))
        bias = paddle.where(allowed, paddle.zeros([1], embeds.dtype),
                            paddle.full([1], paddle.finfo(embeds.dtype).min, embeds.dtype)).unsqueeze(1)

        cos, sin = self.rotary.lookup(step.positions, embeds.dtype)
        h = embeds
        for i, layer in enumerate(self.lm.llama.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).reshape([B, T, H, D])
            k = attn.k_proj(x).reshape([B, T, KVH, D])
            v = attn.v_proj(x).reshape([B, T, KVH, D])
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.write(i, write_index, k.reshape([B * T, KVH, D]), v.reshape([B * T, KVH, D]))
            keys, values = cache.read(i, read_index)
            keys = keys.reshape([B, key_len, KVH, D])
            values = values.reshape([B, key_len, KVH, D])
            if KVH != H:
                keys = paddle.repeat_interleave(keys, H // KVH, axis=2)
                values = paddle.repeat_interleave(values, H // KVH, axis=2)
            out = _decode_attention(q, keys, values, bias) if T == 1 else _attention(q, keys, values, bias)
            h = h + attn.o_proj(out)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm.llama.norm(h)
