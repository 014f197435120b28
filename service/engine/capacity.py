"""Does a request fit this server's KV memory, and if not, which setting stops it and the value it would need.

The one place that knows how a request maps onto the KV cache. The preprocessor asks before a request is queued
(so that the client hears which setting to raise), `GET /info` asks what it may promise, and the engine asks again
before it queues anything. Today the cache is `max_rows` rows of `max_seq_len` positions each, fixed at start: a
request fits when its longest row fits a row and its rows fit the rows. A paged cache answers the same questions
from its block pool. Pure Python, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTEXT_SETTING = "JANUS_MAX_SEQ_LEN"
ROWS_SETTING = "JANUS_MAX_ROWS"


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
class Capacity:
    max_seq_len: int  # positions per row: prompt + new tokens
    max_rows: int | None = None  # rows running at once (None: not checked here)

    def room(self, prompt_tokens: int) -> int:
        """The most new tokens a row can add after a prompt this long (0 or less: the prompt alone does not fit)."""
        return self.max_seq_len - prompt_tokens

    def shortfall(self, prompt_tokens: int, new_tokens: int, rows: int = 1) -> Shortfall | None:
        """None when a request fits: `rows` rows that share a prompt of `prompt_tokens` and each add `new_tokens`.
        Otherwise what stops it (the context first)."""
        if prompt_tokens + new_tokens > self.max_seq_len:
            return Shortfall(CONTEXT_SETTING, self.max_seq_len, prompt_tokens + new_tokens)
        if self.max_rows is not None and rows > self.max_rows:
            return Shortfall(ROWS_SETTING, self.max_rows, rows)
        return None
