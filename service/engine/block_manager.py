"""The one owner of KV memory: which pool blocks each row holds, which blocks are shared, which finished blocks stay
cached for later prompts, and which go when memory is needed. Pure Python: it never touches a tensor (the runner
turns block tables into tensors and applies the block copies recorded here).

- A row's `BlockTable` lists its blocks in position order. Full blocks may be shared by many rows (reference
  counts); a row only ever writes past its own length, so a shared block is never written. When rows split off a
  prompt (several answers, several images) they share its full blocks and each gets a copy of the partly filled
  last one (`fork`).
- Prefix cache: a full block whose content hash is known (see `prompt_blocks.py`) is entered in the prefix table.
  When its last row lets go of it, it stays in the pool as a cached block, least recently released first in line
  for eviction. A new prompt takes the cached blocks of its longest known prefix instead of computing them.
- Admission never waits for cached blocks: they count as available, and taking a block evicts the least recently
  used cached one once nothing is free. An admitted request reserves the blocks its rows could need at their
  longest, so a running row never finds the pool empty (no preemption needed).
- Several positions at once and cutting back (`ensure` / `truncate`) cost a few list operations, for rows that
  verify several draft tokens in one step and keep only some.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field

from service.engine.prompt_blocks import BlockHash, ImageSpan, PromptBlocks, chain_hashes


def worst_case_blocks(block_size: int, prompt_len: int, rows: int, max_len: int) -> int:
    """Blocks `rows` rows sharing a prompt of `prompt_len` hold when each has grown to `max_len`: the prompt's own
    blocks, a copy of its partly filled last block for every row but the first, and every row's growth."""
    prompt_blocks = -(-prompt_len // block_size)
    partial = 1 if prompt_len % block_size else 0
    return prompt_blocks + (rows - 1) * partial + rows * (-(-max_len // block_size) - prompt_blocks)


class OutOfBlocks(RuntimeError):
    """A row asked for a block beyond its reservation and none was free: a bookkeeping bug, never load."""


@dataclass(eq=False)
class BlockTable:
    """One row's positions in the pool."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0  # positions written
    reserve: int = 0  # blocks promised to this row at admission and not taken yet
    hashed: int = 0  # leading blocks entered in the prefix table (or matched there)
    last_hash: BlockHash = b""  # hash of block `hashed - 1`


@dataclass(slots=True)
class BlockStats:
    evictions: int = 0  # cached blocks dropped to make room
    computed_tokens: int = 0  # prompt positions prefilled
    reused_tokens: int = 0  # prompt positions taken from the prefix cache
    lookups: int = 0  # prompts looked up in the prefix cache
    hits: int = 0  # prompts that reused at least one block


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True,
                 features_at_hand: Container[bytes] = ()) -> None:
        """features_at_hand: content hashes of the images whose vision features are cached (a match may end inside
        those images)."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.features_at_hand = features_at_hand
        self._refs = [0] * num_blocks
        self._hash_of: list[BlockHash | None] = [None] * num_blocks
        self._prefix: dict[BlockHash, int] = {}
        # a stack, lowest ids on top: the blocks freed last are handed out first, so a pool bigger than the load
        # keeps reusing the same (resident, cache-warm) memory instead of touching all of it in turn
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._cached: OrderedDict[int, None] = OrderedDict()  # no row holds them, prefix table does; LRU first
        self._reserved = 0  # sum of every table's reserve
        self._copies: list[tuple[int, int]] = []  # (source, destination) block copies owed before the next forward
        self.stats = BlockStats()

    # what is where

    @property
    def available(self) -> int:
        """Blocks an admission may still promise: free ones and cached ones (evictable), less what is reserved."""
        return len(self._free) + len(self._cached) - self._reserved

    @property
    def used(self) -> int:
        """Blocks some row holds."""
        return self.num_blocks - len(self._free) - len(self._cached)

    @property
    def cached(self) -> int:
        """Blocks no row holds that the prefix table keeps for later prompts."""
        return len(self._cached)

    def blocks_for(self, positions: int) -> int:
        return -(-positions // self.block_size)

    # admission

    def match(self, prompt: PromptBlocks) -> list[int]:
        """The cached blocks of the prompt's longest reusable prefix (not taken yet: `admit` takes them)."""
        if not self.prefix_caching:
            return []
        found = []
        for block_hash in prompt.hashes:
            block = self._prefix.get(block_hash)
            if block is None:
                break
            found.append(block)
        return found[:prompt.usable_prefix(len(found), self.features_at_hand)]

    def worst_case(self, prompt_len: int, rows: int, max_len: int, matched: int = 0) -> int:
        """Blocks `rows` rows sharing a prompt may take at most, beyond `matched` reused ones."""
        return worst_case_blocks(self.block_size, prompt_len, rows, max_len) - matched

    def cost(self, prompts: list[PromptBlocks], matches: list[list[int]], rows: int, max_len: int) -> int:
        """What admitting a request takes from `available`: its worst case, plus the matched blocks that sit in
        the cache (taking them makes them unevictable). `rows` rows share each prompt."""
        revived = {b for blocks in matches for b in blocks if self._refs[b] == 0}
        return len(revived) + sum(self.worst_case(len(p), rows, max_len, len(m))
                                  for p, m in zip(prompts, matches, strict=True))

    def admit(self, prompt: PromptBlocks, matched: list[int], rows: int, max_len: int) -> BlockTable:
        """The first row of a prompt: the matched blocks taken, blocks for the rest of the prompt allocated, and
        the reservation of all `rows` rows (handed on by `fork`). Its length is the reused part: the prefill
        computes positions from there."""
        table = BlockTable(reserve=self.worst_case(len(prompt), rows, max_len, len(matched)))
        self._reserved += table.reserve
        for block in matched:
            self._take(block)
        table.blocks = list(matched)
        table.hashed = len(matched)
        table.length = len(matched) * self.block_size
        table.last_hash = prompt.hashes[len(matched) - 1] if matched else b""
        self.ensure(table, len(prompt))
        self.stats.lookups += 1
        self.stats.hits += bool(matched)
        self.stats.reused_tokens += table.length
        self.stats.computed_tokens += len(prompt) - table.length
        return table

    # rows

    def fork(self, table: BlockTable, count: int) -> list[BlockTable]:
        """`count` more rows continuing from `table` (just prefilled): its full blocks shared, its partly filled
        last block copied (the copy is owed: see `take_copies`). Each takes one row's share of the reservation."""
        full = table.length // self.block_size
        partial = table.length % self.block_size != 0
        growth = (table.reserve - count * partial) // (count + 1)
        forks = []
        for _ in range(count):
            fork = BlockTable(list(table.blocks[:full]), table.length, growth + partial, table.hashed,
                              table.last_hash)
            table.reserve -= fork.reserve
            for block in fork.blocks:
                self._refs[block] += 1
            if partial:
                copy = self._allocate(fork)
                self._copies.append((table.blocks[full], copy))
                fork.blocks.append(copy)
            forks.append(fork)
        return forks

    def ensure(self, table: BlockTable, positions: int) -> None:
        """Blocks for `positions` positions in all (several new ones at once is as cheap as one)."""
        while len(table.blocks) * self.block_size < positions:
            table.blocks.append(self._allocate(table))

    def truncate(self, table: BlockTable, length: int) -> None:
        """Cut a row back to `length` positions (drafted positions that were not accepted). Blocks past it go back
        to the row's reservation; a kept last block that others share or the prefix table names is replaced by a
        copy, as the row will write into it."""
        keep = self.blocks_for(length)
        for block in reversed(table.blocks[keep:]):
            self._release(block)
            table.reserve += 1
            self._reserved += 1
        del table.blocks[keep:]
        table.length = min(table.length, length)
        if table.hashed * self.block_size > length:
            table.hashed, table.last_hash = 0, b""  # re-registered from the start if the row finishes
        last = keep - 1
        if length % self.block_size and last >= 0:
            block = table.blocks[last]
            if self._refs[block] > 1 or self._hash_of[block] is not None:
                copy = self._allocate(table)
                self._copies.append((block, copy))
                self._release(block)
                table.blocks[last] = copy

    def register(self, table: BlockTable, ids: list[int], images: tuple[ImageSpan, ...] = ()) -> None:
        """Enter the row's full blocks that are not in the prefix table yet. ids: the token ids of the row's
        positions from the start (at least `table.length` of them)."""
        if not self.prefix_caching:
            return
        full = table.length // self.block_size
        if full <= table.hashed:
            return
        start = table.hashed * self.block_size
        hashes = chain_hashes(table.last_hash, ids[start:full * self.block_size], start, self.block_size, images)
        for block, block_hash in zip(table.blocks[table.hashed:full], hashes, strict=True):
            if block_hash not in self._prefix and self._hash_of[block] is None:
                self._prefix[block_hash] = block
                self._hash_of[block] = block_hash
        table.hashed, table.last_hash = full, hashes[-1]

    def register_prompt(self, table: BlockTable, prompt: PromptBlocks) -> None:
        """Enter the prompt's full blocks (hashes already known) once the prefill has written them."""
        if not self.prefix_caching:
            return
        full = min(len(prompt.hashes), table.length // self.block_size)
        for i in range(table.hashed, full):
            block, block_hash = table.blocks[i], prompt.hashes[i]
            if block_hash not in self._prefix and self._hash_of[block] is None:
                self._prefix[block_hash] = block
                self._hash_of[block] = block_hash
        if full > table.hashed:
            table.hashed, table.last_hash = full, prompt.hashes[full - 1]

    def free(self, table: BlockTable) -> None:
        """The row is done: its blocks go back (the last ones first in line for eviction) with its reservation."""
        for block in reversed(table.blocks):
            self._release(block)
        table.blocks = []
        self._reserved -= table.reserve
        table.reserve = 0

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self._copies = self._copies, []
        return copies

    # blocks

    def _allocate(self, table: BlockTable) -> int:
        if table.reserve > 0:
            table.reserve -= 1
            self._reserved -= 1
        elif self.available <= 0:
            raise OutOfBlocks("no free KV block for a row past its reservation")
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._cached.popitem(last=False)
            del self._prefix[self._hash_of[block]]
            self._hash_of[block] = None
            self.stats.evictions += 1
        self._refs[block] = 1
        return block

    def _take(self, block: int) -> None:
        """A matched block joins a row."""
        if self._refs[block] == 0:
            del self._cached[block]
        self._refs[block] += 1

    def _release(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if self._hash_of[block] is not None:
                self._cached[block] = None
            else:
                self._free.append(block)
