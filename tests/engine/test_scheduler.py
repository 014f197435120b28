"""The scheduler alone (pure Python): admission by rows and KV blocks, the bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from service.engine.block_manager import BlockManager
from service.engine.errors import Overloaded
from service.engine.request import RequestHandle, RequestState
from service.engine.scheduler import Scheduler
from service.engine.types import GenerateParams, UnderstandParams

_LOOP = asyncio.new_event_loop()  # handles need a loop; the scheduler never delivers to it


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    _LOOP.close()  # an unclosed loop warns when it is collected, at a moment no test controls


def _request(rows: int) -> RequestState:
    if rows == 1:
        params = UnderstandParams(prompt_ids=[1, 2], pixel_values=None, max_new_tokens=4)
    else:
        params = GenerateParams(prompt_ids=[1, 2], pad_id=0, image_tokens=4, parallel_size=rows // 2)
    return RequestState(params=params, handle=RequestHandle("r", _LOOP))


def test_admission_is_first_come_first_served_and_bounded_by_rows():
    scheduler = Scheduler(max_rows=6, max_waiting=10)
    big, small_a, small_b = _request(4), _request(4), _request(1)
    for r in (big, small_a, small_b):
        scheduler.add(r)
    assert scheduler.admit() == [big]
    # small_b would fit but must not overtake small_a
    assert scheduler.admit() == []
    scheduler.finish(big)
    assert scheduler.admit() == [small_a, small_b]


def test_full_queue_refuses_with_retry_after():
    scheduler = Scheduler(max_rows=2, max_waiting=1)
    scheduler.add(_request(2))  # takes the free rows at the next step
    scheduler.add(_request(2))  # waits
    with pytest.raises(Overloaded) as refused:
        scheduler.add(_request(2))
    assert refused.value.retry_after_s >= 1


def test_requests_that_fit_the_free_rows_do_not_count_as_waiting():
    scheduler = Scheduler(max_rows=4, max_waiting=0)
    scheduler.add(_request(2))
    scheduler.add(_request(2))
    with pytest.raises(Overloaded):
        scheduler.add(_request(1))


def test_admission_is_also_bounded_by_free_kv_blocks():
    # positions: a prompt of 2 and 4 new tokens fit one block of 8, so a row needs one block at most; a generation
    # request of 4 rows (2 prompts, 2 rows each) needs 4
    scheduler = Scheduler(max_rows=16, max_waiting=10, blocks=BlockManager(num_blocks=4, block_size=8))
    big, small = _request(4), _request(1)
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.admit() == [big]  # rows are free, blocks are not
    assert scheduler.blocks.available == 0
    assert scheduler.admit() == []
    scheduler.prefilled(big)
    scheduler.finish(big)
    assert scheduler.admit() == [small]


def test_rows_and_blocks_come_back_when_requests_leave():
    scheduler = Scheduler(max_rows=8, max_waiting=10, blocks=BlockManager(num_blocks=16, block_size=4))
    requests = [_request(4), _request(1), _request(2)]
    for r in requests:
        scheduler.add(r)
    assert scheduler.admit() == requests
    for r in requests:
        scheduler.prefilled(r)
    assert scheduler.used == 7 and scheduler.blocks.used > 0
    for r in requests:
        scheduler.finish(r)
    assert scheduler.used == 0 and scheduler.blocks.used == 0
    assert scheduler.blocks.available == 16


def test_counts_report_rows_by_kind():
    scheduler = Scheduler(max_rows=8, max_waiting=10)
    for r in (_request(4), _request(1)):
        scheduler.add(r)
    scheduler.admit()
    assert scheduler.counts() == {"waiting": 0, "running_understand_rows": 1, "running_generate_rows": 4,
                                  "free_rows": 3}


def test_requests_queued_elsewhere_count_as_waiting():
    scheduler = Scheduler(max_rows=4, max_waiting=1)
    scheduler.add(_request(2), also_queued=1)  # fits the free rows; one request waits elsewhere
    with pytest.raises(Overloaded):
        scheduler.add(_request(2), also_queued=2)
