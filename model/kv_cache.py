"""Preallocated key/value storage for the Llama backbone: per layer `[slots, kv_heads, max_len, head_dim]`.

Head-major, so the keys of the rows in slots `0..B-1` are the zero-copy view `keys[:B]`, already in the
`[B, heads, len, dim]` layout a batched matmul wants: decoding gathers nothing. That requires the running rows to
occupy the lowest slots (the engine keeps them compact with `copy`). `valid` marks the columns that hold real
tokens, so left padding and stale columns are never attended.

On the CPU the buffers are also seen as numpy arrays over the same memory, and every bookkeeping write (new
keys, validity, slot copies) is one numpy assignment: Paddle's eager ops cost tens of microseconds each however
small the tensor, and a decode step would otherwise spend a dozen of them per layer on index arithmetic and
scatters. On other devices the same writes go through index tensors and `scatter_`.
"""

from __future__ import annotations

import numpy as np
import paddle

from model.host_memory import host_view


class KVCache:
    def __init__(self, num_layers: int, slots: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: str = "float32", host_views: bool | None = None) -> None:
        """host_views: None = on the CPU (where they are possible); False forces the device path."""
        self.slots = slots
        self.max_len = max_len
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        shape = [slots, kv_heads, max_len, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.valid = paddle.zeros([slots, max_len], dtype="float32")  # 1.0 where a column holds a real token
        on_cpu = self.valid.place.is_cpu_place()
        self.on_host = on_cpu if host_views is None else host_views and on_cpu
        if self.on_host:
            self._keys = [host_view(k) for k in self.keys]
            self._values = [host_view(v) for v in self.values]
            self._valid = host_view(self.valid)
        else:
            # reshape shares storage: scatter_ into these lands in the 4-D buffers
            self._flat_keys = [k.reshape([-1, head_dim]) for k in self.keys]
            self._flat_values = [v.reshape([-1, head_dim]) for v in self.values]
            self._flat_valid = self.valid.reshape([-1])
        self._index: paddle.Tensor | None = None  # device path: flat rows the current forward writes
        self._columns: tuple[np.ndarray, np.ndarray] | None = None  # host path: (slots, columns) of a decode step

    @property
    def nbytes(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[0] * k.shape[1] * k.shape[2] * k.shape[3] * k.element_size()

    # a prompt: columns 0..T-1 of fresh slots

    def start_prompt(self, slots: list[int], token_mask: np.ndarray) -> None:
        """Forget what the slots held and mark their prompt's real tokens. token_mask [B, T]: 1 for real tokens."""
        B, T = token_mask.shape
        mask = token_mask.astype(np.float32)
        if self.on_host:
            self._valid[slots] = 0.0
            self._valid[slots, :T] = mask
            self._columns = (np.asarray(slots), np.arange(T))
            return
        slot_ids = np.asarray(slots, np.int64)
        for slot in slots:
            self.valid[slot] = 0.0
        rows = (slot_ids[:, None] * self.max_len + np.arange(T)[None]).flatten()
        paddle.scatter_(self._flat_valid, paddle.to_tensor(rows), paddle.to_tensor(mask.flatten()), overwrite=True)
        self._index = paddle.to_tensor(self._entry_rows(slot_ids, np.broadcast_to(np.arange(T), (B, T))))

    def write_prompt(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        """keys/values [B, T, kv_heads, head_dim] of the prompt started last."""
        if self.on_host:
            slots, columns = self._columns
            T = len(columns)
            self._keys[layer][slots, :, :T] = host_view(keys.contiguous()).transpose(0, 2, 1, 3)
            self._values[layer][slots, :, :T] = host_view(values.contiguous()).transpose(0, 2, 1, 3)
            return
        D = self.head_dim
        self._scatter(layer, keys.transpose([0, 2, 1, 3]).reshape([-1, D]),
                      values.transpose([0, 2, 1, 3]).reshape([-1, D]))

    # a decode step: one new column for each of the rows in slots 0..B-1

    def start_step(self, lengths: list[int]) -> None:
        """Row i (slot i) writes its new token at column lengths[i]."""
        B = len(lengths)
        columns = np.asarray(lengths, np.int64)
        if self.on_host:
            self._columns = (np.arange(B), columns)
            self._valid[np.arange(B), columns] = 1.0
            return
        slot_ids = np.arange(B, dtype=np.int64)
        paddle.scatter_(self._flat_valid, paddle.to_tensor(slot_ids * self.max_len + columns),
                        paddle.ones([B], "float32"), overwrite=True)
        self._index = paddle.to_tensor(self._entry_rows(slot_ids, columns[:, None]))

    def write_step(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        """keys/values [B, 1, kv_heads, head_dim] of the step started last."""
        if self.on_host:
            slots, columns = self._columns
            self._keys[layer][slots, :, columns] = host_view(keys.contiguous())[:, 0]
            self._values[layer][slots, :, columns] = host_view(values.contiguous())[:, 0]
            return
        D = self.head_dim
        self._scatter(layer, keys.reshape([-1, D]), values.reshape([-1, D]))

    def view(self, layer: int, rows: int) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Keys and values of slots 0..rows-1: [rows, kv_heads, max_len, head_dim] views, no copy."""
        return self.keys[layer][:rows], self.values[layer][:rows]

    # slots

    def clear(self, slots: list[int]) -> None:
        """Forget the slots' tokens (their stale keys stay but are masked out)."""
        if self.on_host:
            self._valid[slots] = 0.0
            return
        for slot in slots:
            self.valid[slot] = 0.0

    def copy(self, src: int, dsts: list[int]) -> None:
        """Make each slot of `dsts` a copy of slot `src` (prefill once, copy many; compaction)."""
        dsts = [d for d in dsts if d != src]
        if not dsts:
            return
        if self.on_host:
            for layer in range(len(self.keys)):
                self._keys[layer][dsts] = self._keys[layer][src]
                self._values[layer][dsts] = self._values[layer][src]
            self._valid[dsts] = self._valid[src]
            return
        for dst in dsts:
            for layer in range(len(self.keys)):
                self.keys[layer][dst] = self.keys[layer][src]
                self.values[layer][dst] = self.values[layer][src]
            self.valid[dst] = self.valid[src]

    # device path

    def _entry_rows(self, slots: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """slots [B], columns [B, T] -> flat rows [B * kv_heads * T] of the [slots * kv_heads * max_len, D] views,
        ordered (row, head, column) like `keys.transpose([0, 2, 1, 3])`."""
        heads = np.arange(self.kv_heads, dtype=np.int64)[None, :, None]
        return ((slots[:, None, None] * self.kv_heads + heads) * self.max_len + columns[:, None, :]).flatten()

    def _scatter(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        assert self._index is not None, "start_prompt / start_step first"
        paddle.scatter_(self._flat_keys[layer], self._index, keys, overwrite=True)
        paddle.scatter_(self._flat_values[layer], self._index, values, overwrite=True)
