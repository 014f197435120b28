"""Preallocated key/value storage for the Llama backbone: per layer `[slots, kv_heads, max_len, head_dim]`.

Head-major, so the keys of the rows in slots `0..B-1` are the zero-copy view `keys[:B]`, already in the
`[B, heads, len, dim]` layout a batched matmul wants: decoding gathers nothing. That requires the running rows to
occupy the lowest slots (the engine keeps them compact with `move`). Writes go through flat views with one
`scatter_`. `valid` marks the columns that hold real tokens, so left padding and stale columns are never attended.
"""

from __future__ import annotations

import paddle


class KVCache:
    def __init__(self, num_layers: int, slots: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: str = "float32") -> None:
        self.slots = slots
        self.max_len = max_len
        self.kv_heads = kv_heads
        shape = [slots, kv_heads, max_len, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        # reshape shares storage: scatter_ into these lands in the 4-D buffers
        self._flat_keys = [k.reshape([-1, head_dim]) for k in self.keys]
        self._flat_values = [v.reshape([-1, head_dim]) for v in self.values]
        self.valid = paddle.zeros([slots, max_len], dtype="float32")  # 1.0 where a column holds a real token
        self._flat_valid = self.valid.reshape([-1])

    @property
    def nbytes(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[0] * k.shape[1] * k.shape[2] * k.shape[3] * k.element_size()

    def entry_index(self, slots: paddle.Tensor, columns: paddle.Tensor) -> paddle.Tensor:
        """slots [B], columns [B, T] -> flat row indices [B, kv_heads, T] into the flat key/value views."""
        heads = paddle.arange(self.kv_heads, dtype="int64").reshape([1, -1, 1])
        return (slots.reshape([-1, 1, 1]) * self.kv_heads + heads) * self.max_len + columns.unsqueeze(1)

    def write(self, layer: int, index: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        """index [N] flat rows (from `entry_index`); keys/values [N, head_dim] in the same order."""
        paddle.scatter_(self._flat_keys[layer], index, keys, overwrite=True)
        paddle.scatter_(self._flat_values[layer], index, values, overwrite=True)

    def mark_valid(self, slots: paddle.Tensor, columns: paddle.Tensor, token_mask: paddle.Tensor) -> None:
        """slots [B], columns [B, T], token_mask [B, T]."""
        index = (slots.unsqueeze(1) * self.max_len + columns).flatten()
        paddle.scatter_(self._flat_valid, index, token_mask.flatten().astype("float32"), overwrite=True)

    def view(self, layer: int, rows: int) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Keys and values of slots 0..rows-1: [rows, kv_heads, max_len, head_dim] views, no copy."""
        return self.keys[layer][:rows], self.values[layer][:rows]

    def clear(self, slots: list[int]) -> None:
        """Forget the slots' tokens (their stale keys stay but are masked out)."""
        for slot in slots:
            self.valid[slot] = 0.0

    def copy(self, src: int, dsts: list[int], length: int | None = None) -> None:
        """Make each slot of `dsts` a copy of slot `src` (prefill once, copy many; compaction)."""
        for dst in dsts:
            if dst == src:
                continue
            for layer in range(len(self.keys)):
                self.keys[layer][dst] = self.keys[layer][src]
                self.values[layer][dst] = self.values[layer][src]
            self.valid[dst] = self.valid[src]
