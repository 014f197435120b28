"""The scheduler alone (pure Python): admission by rows and KV blocks, the bounded queue, the order of steps, and what
a step's output does to the rows (tokens, lengths, blocks), driven with made-up runner outputs."""

from __future__ import annotations

import asyncio

import pytest

from service.engine.block_manager import BlockManager
from service.engine.errors import Overloaded
from service.engine.plan import Plan, StepOutput
from service.engine.request import Request, RequestHandle
from service.engine.scheduler import Scheduler
from service.engine.types import GenerateParams, UnderstandParams

_LOOP = asyncio.new_event_loop()  # handles need a loop; nothing runs it, so events are queued and dropped


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    _LOOP.close()  # an unclosed loop warns when it is collected, at a moment no test controls


def _request(rows: int, prompt: list[int] | None = None, steps: int = 4) -> Request:
    prompt = prompt or [1, 2]
    if rows == 1:
        params = UnderstandParams(prompt_ids=prompt, pixel_values=None, max_new_tokens=steps)
    else:
        params = GenerateParams(prompt_ids=prompt, pad_id=0, image_tokens=steps, parallel_size=rows // 2)
    return Request(params=params, handle=RequestHandle("r", _LOOP))


def _drawn(plan: Plan, tokens: list[int] | None = None) -> StepOutput:
    """What the runner answers to a plan: one token per row (the same for every row unless given)."""
    tokens = tokens or [5] * len(plan.rows)
    return StepOutput([[token] for token in tokens], [[] for _ in plan.rows])


def _step(scheduler: Scheduler) -> Plan:
    plan = scheduler.schedule()
    scheduler.postprocess(plan, _drawn(plan))
    return plan


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
    assert scheduler.schedule().prefill == [big]  # rows are free, blocks are not
    assert scheduler.blocks.available == 0
    assert scheduler.admit() == []
    scheduler.finish(big)
    assert scheduler.admit() == [small]


def test_rows_and_blocks_come_back_when_requests_leave():
    scheduler = Scheduler(max_rows=8, max_waiting=10, blocks=BlockManager(num_blocks=16, block_size=4))
    requests = [_request(4), _request(1), _request(2)]
    for r in requests:
        scheduler.add(r)
    while any(not r.rows[-1].tokens for r in requests):  # every row prefilled and shown its first token
        _step(scheduler)
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


def test_requests_admitted_together_are_prefilled_then_every_row_decodes_before_the_next_admission():
    scheduler = Scheduler(max_rows=16, max_waiting=10, prefill_batch=2)
    first = [_request(1, [1, 2, i]) for i in range(3)] + [_request(4)]
    for r in first:
        scheduler.add(r)
    plans = [_step(scheduler) for _ in range(3)]
    # understanding prompts two at a time (prefill_batch); a generation request batches its own rows
    assert [p.prefill for p in plans] == [first[:2], first[3:], first[2:3]]
    late = _request(1)
    scheduler.add(late)
    decode = _step(scheduler)
    assert not decode.prefill and [row.request for row in decode.rows] == first[:3] + [first[3]] * 4
    assert decode.inputs == [[5]] * 7  # each row feeds the token it drew
    assert _step(scheduler).prefill == [late]  # admitted only after every running row decoded once


def test_rows_that_append_several_positions_are_cut_back_to_the_tokens_they_keep():
    """A row that feeds drafts after its last token writes their positions in the step; the positions after the first
    draft that the runner rejects are given back, with their blocks, and the row goes on from the kept ones."""
    blocks = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(max_rows=4, max_waiting=4, blocks=blocks)
    request = _request(2, [1, 2, 3], steps=16)  # a guided image: a conditional and an unconditional row
    scheduler.add(request)
    _step(scheduler)  # prefilled, first token drawn
    rows = request.rows
    assert [row.table.length for row in rows] == [3, 3]
    available = blocks.available
    for row in rows:
        row.drafts = [7, 8, 9, 10, 11]  # a window of five drafts after the last token
    plan = scheduler.schedule()
    assert plan.inputs == [[5, 7, 8, 9, 10, 11]] * 2
    assert all(len(row.table.blocks) == 3 for row in rows)  # 3 + 6 positions: blocks for all of them
    out = StepOutput([[7, 8, 4]] * 2, [[], []])  # two drafts accepted, then the token drawn after them
    scheduler.postprocess(plan, out)
    assert [row.table.length for row in rows] == [3 + 3] * 2  # the last token and the two accepted drafts
    assert [row.tokens for row in rows] == [[5, 7, 8, 4]] * 2 and request.steps_done == 4
    assert all(len(row.table.blocks) == 2 and not row.drafts for row in rows)
    assert blocks.available == available  # the blocks given back are the rows' reservation again
    plan = scheduler.schedule()
    assert plan.inputs == [[4]] * 2 and [row.table.length for row in rows] == [6, 6]
