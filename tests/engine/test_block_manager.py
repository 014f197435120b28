"""The block manager alone (pure Python): sharing, reservations, the prefix table, eviction order, cutting back."""

from __future__ import annotations

import pytest

from service.engine.block_manager import BlockManager
from service.engine.prompt_blocks import ImageSpan, PromptBlocks


def _prompt(ids: list[int], images: tuple[ImageSpan, ...] = ()) -> PromptBlocks:
    return PromptBlocks(ids, 4, images)


def _run(manager: BlockManager, prompt: PromptBlocks, rows: int = 1, max_len: int | None = None):
    """Admit, 'prefill' and register the prompt, fork its rows: what the scheduler does."""
    max_len = max_len or len(prompt) + 4
    matched = manager.match(prompt)
    assert manager.cost([prompt], [matched], rows, max_len) <= manager.available
    table = manager.admit(prompt, matched, rows, max_len)
    table.length = len(prompt)
    manager.register_prompt(table, prompt)
    return [table, *manager.fork(table, rows - 1)]


def test_rows_of_one_prompt_share_its_full_blocks_and_copy_the_partial_one():
    manager = BlockManager(32, 4)
    tables = _run(manager, _prompt(list(range(10))), rows=3)  # 2 full blocks, 2 positions in a third
    assert all(t.blocks[:2] == tables[0].blocks[:2] for t in tables)
    assert len({t.blocks[2] for t in tables}) == 3
    assert manager.take_copies() == [(tables[0].blocks[2], t.blocks[2]) for t in tables[1:]]
    assert manager.used == 2 + 3


def test_the_reservation_covers_every_row_at_its_longest_and_comes_back():
    manager = BlockManager(32, 4)
    tables = _run(manager, _prompt(list(range(10))), rows=2, max_len=20)  # 5 blocks per row at the end
    for table in tables:
        manager.ensure(table, 20)
    assert manager.available == 32 - 2 - 2 * 3  # shared 2 + 3 own each: nothing more was promised
    for table in tables:
        manager.free(table)
    assert manager.available == 32 and manager.used == 0


def test_a_repeated_prompt_matches_all_but_its_last_position():
    manager = BlockManager(32, 4)
    prompt = _prompt(list(range(12)))  # exactly 3 blocks: the last must still run, so 2 are reused
    (first,) = _run(manager, prompt)
    blocks = list(first.blocks)
    manager.free(first)
    assert manager.match(prompt) == blocks[:2]


def test_a_match_never_ends_inside_an_image():
    image = ImageSpan(3, 11, b"pixels")
    prompt = _prompt(list(range(16)), (image,))
    assert prompt.usable_prefix(2) == 0  # block 2 ends at 8, inside [3, 11): back to the image's start
    assert prompt.usable_prefix(3) == 3  # 12: past the image
    assert prompt.usable_prefix(2, features_at_hand={b"pixels"}) == 2  # its features are cached: may end inside
    other = _prompt(list(range(16)), (ImageSpan(3, 11, b"other pixels"),))
    assert other.hashes[0] != prompt.hashes[0] and other.hashes[3] != prompt.hashes[3]


def test_cached_blocks_are_evicted_least_recently_released_first_and_chain_tails_before_heads():
    manager = BlockManager(8, 4)
    (a,) = _run(manager, _prompt([1] * 13), max_len=13)  # 4 blocks, 3 full
    a_blocks = list(a.blocks)
    manager.free(a)
    (b,) = _run(manager, _prompt([2] * 13), max_len=13)
    manager.free(b)
    assert manager.cached == 6 and manager.available == 8
    (c,) = _run(manager, _prompt([3] * 9), max_len=9)  # 3 blocks: 2 free, then a's last full block goes
    assert manager.stats.evictions == 1
    assert a_blocks[2] in c.blocks
    assert manager.match(_prompt([1] * 13)) == a_blocks[:2]


def test_cutting_back_returns_blocks_to_the_reservation_and_copies_a_shared_last_block():
    manager = BlockManager(32, 4)
    first, second = _run(manager, _prompt(list(range(8)) + [99]), rows=2, max_len=24)
    manager.take_copies()
    manager.ensure(second, 20)  # several positions at once (drafts)
    second.length = 20
    available = manager.available
    manager.truncate(second, 6)  # back into the shared second block
    assert len(second.blocks) == 2 and second.blocks[0] == first.blocks[0]
    assert second.blocks[1] != first.blocks[1]
    assert manager.take_copies() == [(first.blocks[1], second.blocks[1])]
    assert manager.available == available
    manager.ensure(second, 24)  # the reservation still covers the row at its longest


def test_a_row_past_its_reservation_with_nothing_free_is_a_bug_not_a_wait():
    from service.engine.block_manager import OutOfBlocks

    manager = BlockManager(2, 4)
    (table,) = _run(manager, _prompt([1, 2, 3]), max_len=8)
    manager.ensure(table, 8)
    with pytest.raises(OutOfBlocks):
        manager.ensure(table, 12)


def test_freed_blocks_are_handed_out_again_before_untouched_ones():
    """A pool far bigger than the load keeps using the same few blocks (the KV pool's memory becomes resident as
    blocks are first written: cycling through all of them would make the whole pool resident)."""
    manager = BlockManager(64, 4, prefix_caching=False)
    seen: set[int] = set()
    for n in range(10):
        tables = _run(manager, _prompt(list(range(100 * n, 100 * n + 9))), rows=2)  # 2 shared, 2 partial
        for table in tables:
            manager.ensure(table, 13)
            seen.update(table.blocks)
        manager.take_copies()
        for table in tables:
            manager.free(table)
    assert seen == set(range(6))  # and 1 more each for positions 12-13
