"""Does a request fit this server's KV memory, and if not, which setting stops it and the value it would need.

The one place that knows how a request maps onto the KV cache. The preprocessor asks before a request is queued
(so that the client hears which setting to raise), `GET /info` asks what it may promise, and the engine asks again
before it queues anything. A request fits when each row stays within `max_seq_len`, its rows within `max_rows`, and
the blocks its rows could hold at their longest (prompt blocks shared, see `block_manager.worst_case_blocks`)
within the whole KV pool. Pure Python, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engine.block_manager import worst_case_blocks

CONTEXT_SETTING = "JANUS_MAX_SEQ_LEN"
ROWS_SETTING = "JANUS_MAX_ROWS"
KV_SETTING = "JANUS_KV_CACHE_MB"
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Shortfall:
    """The server setting that keeps a request out, its value now and the least value that would let it in."""

    setting: str
    limit: int
    needed: int

    @property
    def advice(self) -> str:
        return f"raise {self.setting} to at least {self.needed}"


@dataclass(frozen=True, slots=True)
class KVPool:
    blocks: int
    block_size: int  # positions per block
    block_bytes: int  # one block over all layers, keys and values

    def mib(self, blocks: int) -> int:
        return -(-blocks * self.block_bytes // MiB)


@dataclass(frozen=True, slots=True)
class Capacity:
    max_seq_len: int  # positions per row: prompt + new tokens
    max_rows: int | None = None  # rows running at once (None: not checked here)
    pool: KVPool | None = None  # the KV blocks (None: not checked here)

    def room(self, prompt_tokens: int) -> int:
        """The most new tokens a row can add after a prompt this long (0 or less: the prompt alone does not fit)."""
        return self.max_seq_len - prompt_tokens

    def shortfall(self, prompt_tokens: int, new_tokens: int, rows: int = 1, prompts: int = 1) -> Shortfall | None:
        """None when a request fits: `rows` rows that share `prompts` prompts of `prompt_tokens` (a guided
        generation: two, the conditional and the unconditional) and each add `new_tokens`. Otherwise what stops it
        (the context first, then the rows, then the KV memory)."""
        if prompt_tokens + new_tokens > self.max_seq_len:
            return Shortfall(CONTEXT_SETTING, self.max_seq_len, prompt_tokens + new_tokens)
        if self.max_rows is not None and rows > self.max_rows:
            return Shortfall(ROWS_SETTING, self.max_rows, rows)
        if self.pool is not None:
            blocks = self.kv_blocks(prompt_tokens, new_tokens, rows, prompts)
            if blocks > self.pool.blocks:
                return Shortfall(KV_SETTING, self.pool.mib(self.pool.blocks), self.pool.mib(blocks))
        return None

    def kv_blocks(self, prompt_tokens: int, new_tokens: int, rows: int = 1, prompts: int = 1) -> int:
        """KV blocks such a request could hold at once, with nothing reused from other requests."""
        assert self.pool is not None
        return prompts * worst_case_blocks(self.pool.block_size, prompt_tokens, rows // prompts,
                                           prompt_tokens + new_tokens)
