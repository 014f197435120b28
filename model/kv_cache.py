"""Preallocated key/value storage for the Llama backbone, addressed by (slot, column).

Each layer owns one key and one value buffer of `slots * max_len` entries, flattened so that writing a step's keys
for every row is a single `scatter_` and reading a row's history a single `index_select`, with no per-step
concatenation. A slot holds one row (one sequence); `valid` marks the columns that hold real tokens, so left padding
written by a batched prefill is never attended to.
"""

from __future__ import annotations

import paddle


class KVCache:
    def __init__(self, num_layers: int, slots: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: str = "float32") -> None:
        self.slots = slots
        self.max_len = max_len
        shape = [slots * max_len, kv_heads, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.valid = paddle.zeros([slots * max_len], dtype="float32")  # 1.0 where a column holds a real token

    @property
    def nbytes(self) -> int:
        per_buffer = self.keys[0].numel().item() * self.keys[0].element_size()
        return 2 * len(self.keys) * per_buffer

    def flat_index(self, slots: paddle.Tensor, columns: paddle.Tensor) -> paddle.Tensor:
        """slots [B], columns [B, T] -> flat entry indices [B, T]."""
        return slots.unsqueeze(1) * self.max_len + columns

    def write(self, layer: int, index: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        """index [N] flat entries; keys/values [N, kv_heads, head_dim]."""
        paddle.scatter_(self.keys[layer], index, keys, overwrite=True)
        paddle.scatter_(self.values[layer], index, values, overwrite=True)

    def mark_valid(self, index: paddle.Tensor, token_mask: paddle.Tensor) -> None:
        paddle.scatter_(self.valid, index, token_mask.astype("float32"), overwrite=True)

    def read(self, layer: int, index: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """index [N] -> keys, values [N, kv_heads, head_dim]."""
        return (paddle.index_select(self.keys[layer], index), paddle.index_select(self.values[layer], index))

    def clear(self, slots: list[int]) -> None:
        """Forget the slots' tokens (their stale keys stay but are masked out)."""
        if not slots:
            return
        index = self._columns_of(slots, self.max_len)
        paddle.scatter_(self.valid, index, paddle.zeros([index.shape[0]], dtype="float32"), overwrite=True)

    def copy(self, src: int, dsts: list[int], length: int) -> None:
        """Copy the first `length` columns of slot `src` into each slot of `dsts` (prefill once, copy many)."""
        if not dsts:
            return
        src_index = self._columns_of([src] * len(dsts), length)
        dst_index = self._columns_of(dsts, length)
        for layer in range(len(self.keys)):
            keys, values = self.read(layer, src_index)
            self.write(layer, dst_index, keys, values)
        paddle.scatter_(self.valid, dst_index, paddle.index_select(self.valid, src_index), overwrite=True)
        self.clear_tail(dsts, length)

    def clear_tail(self, slots: list[int], start: int) -> None:
        if start >= self.max_len or not slots:
            return
        base = paddle.to_tensor(slots, dtype="int64").unsqueeze(1) * self.max_len
        index = (base + paddle.arange(start, self.max_len, dtype="int64").unsqueeze(0)).flatten()
        paddle.scatter_(self.valid, index, paddle.zeros([index.shape[0]], dtype="float32"), overwrite=True)

    def _columns_of(self, slots: list[int], length: int) -> paddle.Tensor:
        base = paddle.to_tensor(slots, dtype="int64").unsqueeze(1) * self.max_len
        return (base + paddle.arange(length, dtype="int64").unsqueeze(0)).flatten()
