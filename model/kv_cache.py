"""Paged key/value storage for the Llama backbone: one pool of fixed-size blocks per layer,
`[blocks, kv_heads, block_size, head_dim]`, and rows that address it through block tables.

A row is any sequence the backbone extends (a prompt, an answer, one image of a generation). Its position j lives in
block `table[j // block_size]` at offset `j % block_size`; which blocks a row owns, shares or gives back is decided
outside `model/` (the service's block manager). Here: where a forward's new keys and values go (`RowBatch`), the
writes, and whole-block copies (copy-on-write of a shared, partly filled block).

Head-major inside a block, so one head's keys of one block are `block_size` contiguous rows of `head_dim`: the
attention kernels read a block's run of keys with unit stride.

On the CPU the pool is also seen as numpy arrays over the same memory, and every write is one numpy assignment
(Paddle's eager ops cost tens of microseconds each however small the tensor). On other devices the same writes
go through index tensors and `scatter_`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from model.host_memory import host_view, zeros_on_demand


@dataclass(slots=True)
class RowBatch:
    """The rows of one forward: each appends T - pad[b] positions after the cached[b] it already has.

    tables [B, blocks per row] int64: row b's blocks in position order (entries past its last block: any valid id);
    cached [B]: positions already in the pool; pad [B]: left-padding columns of this forward's T (0 for decoding).
    Row b's column t (t >= pad[b]) is position cached[b] + t - pad[b].
    """

    tables: np.ndarray
    cached: np.ndarray
    pad: np.ndarray

    @classmethod
    def of(cls, tables: list[list[int]], cached: list[int], pad: list[int] | None = None) -> RowBatch:
        width = max(1, max(len(t) for t in tables))
        array = np.zeros((len(tables), width), np.int64)
        for b, table in enumerate(tables):
            array[b, :len(table)] = table
        pad_array = np.zeros(len(tables), np.int64) if pad is None else np.asarray(pad, np.int64)
        return cls(array, np.asarray(cached, np.int64), pad_array)

    def lengths(self, T: int) -> np.ndarray:
        """Positions each row has after the forward."""
        return self.cached + T - self.pad

    def positions(self, T: int) -> np.ndarray:
        """[B, T] rotary position of every column (padding columns: 0)."""
        columns = np.arange(T)[None, :] - self.pad[:, None]
        return np.where(columns >= 0, self.cached[:, None] + columns, 0)


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: str = "float32", host_views: bool | None = None) -> None:
        """host_views: None = on the CPU (where they are possible); False forces the device path."""
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        shape = [num_blocks, kv_heads, block_size, head_dim]
        # zeros, not empty: the Paddle path reads whole blocks and masks what is stale, and a masked NaN still
        # poisons a matmul; stale finite values never do. On demand: a block takes memory when first written, so an
        # 8 GiB pool is not 8 GiB resident from the start.
        self.keys = [zeros_on_demand(shape, dtype) for _ in range(num_layers)]
        self.values = [zeros_on_demand(shape, dtype) for _ in range(num_layers)]
        on_cpu = self.keys[0].place.is_cpu_place()
        self.on_host = on_cpu if host_views is None else host_views and on_cpu
        if self.on_host:
            self._keys = [host_view(k) for k in self.keys]
            self._values = [host_view(v) for v in self.values]
        else:
            # reshape shares storage: scatter_ into these lands in the 4-D pools
            self._flat_keys = [k.reshape([-1, head_dim]) for k in self.keys]
            self._flat_values = [v.reshape([-1, head_dim]) for v in self.values]
        self._target: tuple[np.ndarray, ...] | None = None  # host path: (batch rows, columns, blocks, offsets)
        self._index: tuple[paddle.Tensor, paddle.Tensor] | None = None  # device path: (sources, pool rows)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers, keys and values."""
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[2] * k.shape[3] * k.element_size()

    @property
    def nbytes(self) -> int:
        return self.block_bytes * self.num_blocks

    def start(self, rows: RowBatch, T: int) -> None:
        """Address the new positions of a forward of T columns (padding columns are not written)."""
        b, t = np.nonzero(np.arange(T)[None, :] >= rows.pad[:, None])
        position = rows.cached[b] + t - rows.pad[b]
        block = rows.tables[b, position // self.block_size]
        offset = position % self.block_size
        if self.on_host:
            self._target = (b, t, block, offset)
            return
        heads = np.arange(self.kv_heads, dtype=np.int64)[None, :]
        pool_rows = (block[:, None] * self.kv_heads + heads) * self.block_size + offset[:, None]  # [N, kv_heads]
        self._index = (paddle.to_tensor(b * T + t), paddle.to_tensor(pool_rows.flatten()))

    def write(self, layer: int, keys: paddle.Tensor, values: paddle.Tensor) -> None:
        """keys/values [B, T, kv_heads, head_dim] of the forward started last."""
        if self.on_host:
            self.write_host(layer, host_view(keys.contiguous()), host_view(values.contiguous()))
            return
        assert self._index is not None, "start() first"
        sources, pool_rows = self._index
        B, T, KVH, D = keys.shape
        for flat, new in ((self._flat_keys[layer], keys), (self._flat_values[layer], values)):
            chosen = paddle.index_select(new.reshape([B * T, KVH, D]), sources).reshape([-1, D])
            paddle.scatter_(flat, pool_rows, chosen.astype(flat.dtype), overwrite=True)

    def write_host(self, layer: int, keys: np.ndarray, values: np.ndarray) -> None:
        """`write` from float arrays [B, T, kv_heads, head_dim] (a cache on the host only)."""
        assert self._target is not None, "start() first"
        b, t, block, offset = self._target
        self._keys[layer][block, :, offset] = keys[b, t]
        self._values[layer][block, :, offset] = values[b, t]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (source, destination) in every layer: a shared block a row is about to write into."""
        if not pairs:
            return
        src = [s for s, _ in pairs]
        dst = [d for _, d in pairs]
        if self.on_host:
            for layer in range(len(self.keys)):
                self._keys[layer][dst] = self._keys[layer][src]
                self._values[layer][dst] = self._values[layer][src]
            return
        for s, d in pairs:
            for layer in range(len(self.keys)):
                self.keys[layer][d] = self.keys[layer][s]
                self.values[layer][d] = self.values[layer][s]
