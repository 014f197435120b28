"""The engine's settings (the service fills them from its own `Settings`), and the KV pool's size they make."""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from model.janus import JanusModel

MiB = 1024 * 1024


@dataclass(slots=True)
class EngineConfig:
    max_rows: int = 32  # rows decoding at once (a generation image takes 2, 1 with cfg_weight 1)
    max_seq_len: int | None = None  # per-request limit: prompt + new tokens (None: the model's context)
    kv_cache_mb: int = 8192  # KV pool budget in MiB (never more blocks than max_rows rows of max_seq_len need)
    kv_blocks: int | None = None  # the pool in blocks, overriding kv_cache_mb (tests)
    block_size: int = 16  # positions per KV block
    prefix_cache: bool = True  # reuse the KV blocks of known prompt prefixes across requests
    feature_cache_mb: int = 256  # aligned vision features of recent images, by pixel hash (0: off)
    max_waiting: int = 64  # queued requests beyond the running ones
    default_timeout_s: float = 600.0
    progress_every: int = 16  # generation progress event cadence, in steps
    prefill_batch: int = 4  # understanding prompts prefilled together at most
    prefill_tokens: int = 4096  # and at most this many (padded) prompt tokens in one prefill
    # CPU: threads of the image decoder while requests run (the engine thread keeps OMP_NUM_THREADS; with no
    # request running the decoder takes that many too); 0 = half, at least one.
    decode_threads: int = 0
    images_per_decode: int = 1  # CPU: images per VQ-decoder call (the GPU decodes a request's images at once)
    speculative: bool = False  # generations verify windows of draft image tokens unless a request says otherwise
    speculative_window: int = 8  # drafts per image and step when speculative
    # positions a speculative request's rows may feed in one step (its window shrinks to fit; 0: no limit)
    speculative_positions: int = 48

    def __post_init__(self) -> None:
        for name in ("max_rows", "progress_every", "images_per_decode", "kv_cache_mb", "block_size",
                     "speculative_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_seq_len", "kv_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_waiting < 0 or self.default_timeout_s <= 0 or self.decode_threads < 0:
            raise ValueError("max_waiting and decode_threads must be >= 0 and default_timeout_s > 0")
        if self.speculative_positions < 0:
            raise ValueError("speculative_positions must be >= 0")
        if self.feature_cache_mb < 0:
            raise ValueError("feature_cache_mb must be >= 0")

    def pool_blocks(self, block_bytes: int, max_seq_len: int) -> int:
        """Blocks in the KV pool: the budget's worth, but never more than max_rows rows of max_seq_len need."""
        if self.kv_blocks is not None:
            return self.kv_blocks
        budget = self.kv_cache_mb * MiB // block_bytes
        ceiling = self.max_rows * -(-max_seq_len // self.block_size)
        return max(1, min(budget, ceiling))


def kv_block_bytes(model: JanusModel, block_size: int) -> int:
    """Bytes of one KV block over all layers, keys and values, in the model's dtype."""
    lang = model.cfg.language
    element = 4 if model.dtype == paddle.float32 else 2
    return 2 * lang.num_hidden_layers * lang.num_key_value_heads * lang.head_dim * block_size * element
