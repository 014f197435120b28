"""The block manager as a state machine: random admissions (with prefix hits), prefills that split prompts into rows,
appends of one or several positions, cut-backs, rows and requests that end, and evictions, under a small pool; after
every step the pool's bookkeeping must hold together:

- every block is free, cached (evictable) or used, never two of these, and the three add up to the pool;
- a block's reference count is the number of live tables that hold it; a block two tables hold is a full block of
  both (written once, by the prefill or the row that filled it, and only read since), and no table holds a block twice;
- an evictable block is in no live table, and the prefix table names it; a free block has no name;
- what admission may still promise (`available`) is the free and cached blocks less every row's reservation, and
  every row can still grow to its longest within its own reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from service.engine.block_manager import BlockManager, BlockTable
from service.engine.prompt_blocks import PromptBlocks

BLOCK = 4


def _answer_token(position: int) -> int:
    """Every row writes the same token at a position, so answers repeat and their blocks can be matched later."""
    return 100 + position % 7


_BASE = [1, 2, 3, 4, 5, 6, 7, 8, 9]
PROMPTS = [
    _BASE,  # two full blocks and one position
    _BASE[:8] + [20, 21, 22],  # the same first two blocks, then another ending
    _BASE + [_answer_token(p) for p in range(9, 14)],  # the first prompt with an answer after it: the next turn
    [30, 31, 32],  # nothing in common, shorter than a block
    _BASE[:4] + [40, 41, 42, 43, 44],  # the first block in common
]


@dataclass(eq=False)
class Row:
    table: BlockTable
    tokens: list[int] = field(default_factory=list)  # fed after the prompt, one per position


@dataclass(eq=False)
class Request:
    prompt: PromptBlocks
    rows_wanted: int
    max_len: int
    rows: list[Row]
    prefilled: bool = False


class BlockManagerStates(RuleBasedStateMachine):
    @initialize(pool=st.integers(4, 12), prefix_caching=st.booleans())
    def make_pool(self, pool: int, prefix_caching: bool) -> None:
        self.manager = BlockManager(pool, BLOCK, prefix_caching)
        self.requests: list[Request] = []

    # requests

    @rule(choice=st.integers(0, len(PROMPTS) - 1), rows=st.integers(1, 3), extra=st.integers(1, 9))
    def admit(self, choice: int, rows: int, extra: int) -> None:
        """As the scheduler admits: when the worst case fits what is available, cached blocks counting as free."""
        prompt = PromptBlocks(PROMPTS[choice], BLOCK)
        max_len = len(prompt) + extra
        matched = self.manager.match(prompt)
        if self.manager.cost([prompt], [matched], rows, max_len) > self.manager.available:
            return
        table = self.manager.admit(prompt, matched, rows, max_len)
        self.requests.append(Request(prompt, rows, max_len, [Row(table)]))

    @precondition(lambda self: any(not r.prefilled for r in self.requests))
    @rule(data=st.data())
    def prefill(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from([r for r in self.requests if not r.prefilled]))
        table = request.rows[0].table
        table.length = len(request.prompt)
        self.manager.register_prompt(table, request.prompt)
        request.rows += [Row(fork) for fork in self.manager.fork(table, request.rows_wanted - 1)]
        request.prefilled = True
        self.manager.take_copies()  # the runner applies them before the next forward

    @precondition(lambda self: any(r.prefilled for r in self.requests))
    @rule(data=st.data(), positions=st.integers(1, 5))
    def append(self, data: st.DataObject, positions: int) -> None:
        """A row writes one position, or several at once (a token and the drafts after it)."""
        request, row = self._row(data)
        end = min(row.table.length + positions, request.max_len)
        self.manager.ensure(row.table, end)
        row.tokens += [_answer_token(p) for p in range(row.table.length, end)]
        row.table.length = end

    @precondition(lambda self: any(r.prefilled for r in self.requests))
    @rule(data=st.data())
    def cut_back(self, data: st.DataObject) -> None:
        """Drafted positions that were not accepted are given back (never into the prompt)."""
        request, row = self._row(data)
        length = data.draw(st.integers(len(request.prompt), row.table.length))
        self.manager.truncate(row.table, length)
        del row.tokens[length - len(request.prompt):]
        self.manager.take_copies()

    @precondition(lambda self: any(r.prefilled and len(r.rows) > 1 for r in self.requests))
    @rule(data=st.data())
    def end_row(self, data: st.DataObject) -> None:
        """One answer of several ends: its row goes, the others go on."""
        request = data.draw(st.sampled_from([r for r in self.requests if r.prefilled and len(r.rows) > 1]))
        row = data.draw(st.sampled_from(request.rows))
        self._free(request, row)
        request.rows.remove(row)

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data())
    def end_request(self, data: st.DataObject) -> None:
        """A request ends (or fails before its prefill): its rows' full blocks stay cached for later prompts."""
        request = data.draw(st.sampled_from(self.requests))
        for row in request.rows:
            self._free(request, row)
        self.requests.remove(request)

    def _row(self, data: st.DataObject) -> tuple[Request, Row]:
        request = data.draw(st.sampled_from([r for r in self.requests if r.prefilled]))
        return request, data.draw(st.sampled_from(request.rows))

    def _free(self, request: Request, row: Row) -> None:
        if request.prefilled:
            self.manager.register(row.table, request.prompt.ids + row.tokens, request.prompt.images)
        self.manager.free(row.table)

    # invariants (the manager's own bookkeeping, read directly)

    @invariant()
    def every_block_is_free_cached_or_used_once(self) -> None:
        manager = self.manager
        free, cached = set(manager._free), set(manager._cached)
        used = {b for b in range(manager.num_blocks) if manager._refs[b] > 0}
        assert len(free) == len(manager._free), "a block is twice on the free list"
        assert not free & cached and not free & used and not cached & used
        assert len(free) + len(cached) + len(used) == manager.num_blocks
        assert manager.used == len(used) and manager.cached == len(cached)

    @invariant()
    def reference_counts_are_the_tables_holding_a_block_and_shared_blocks_are_full(self) -> None:
        holders: dict[int, int] = {}
        for table in self._tables():
            assert len(set(table.blocks)) == len(table.blocks), f"a table holds a block twice: {table.blocks}"
            full = table.length // BLOCK
            for index, block in enumerate(table.blocks):
                holders[block] = holders.get(block, 0) + 1
                if self.manager._refs[block] > 1:
                    assert index < full, f"block {block} is shared but row position {index} is not full in a holder"
        for block in range(self.manager.num_blocks):
            assert self.manager._refs[block] == holders.get(block, 0), f"block {block}"

    @invariant()
    def evictable_blocks_are_in_no_live_table_and_named_in_the_prefix_table(self) -> None:
        manager = self.manager
        live = {block for table in self._tables() for block in table.blocks}
        for block in manager._cached:
            assert block not in live, f"evictable block {block} is held by a live row"
            assert manager._prefix.get(manager._hash_of[block]) == block
        for block in manager._free:
            assert manager._hash_of[block] is None

    @invariant()
    def available_counts_reservations_and_every_row_can_grow_to_its_longest(self) -> None:
        manager = self.manager
        tables = list(self._tables())
        assert manager._reserved == sum(table.reserve for table in tables)
        assert manager.available == len(manager._free) + len(manager._cached) - manager._reserved >= 0
        for request in self.requests:
            for row in request.rows:
                if request.prefilled:
                    assert row.table.reserve >= manager.blocks_for(request.max_len) - len(row.table.blocks)

    def _tables(self) -> list[BlockTable]:
        return [row.table for request in self.requests for row in request.rows]


BlockManagerStates.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBlockManagerStates = BlockManagerStates.TestCase
