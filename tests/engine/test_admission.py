"""Admission against time: a request that could only time out in the queue is refused at once, and Retry-After is
an estimate for that kind of request, bounded. The scheduler alone, on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from service.engine.admission import MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S
from service.engine.errors import Overloaded
from service.engine.request import Request, RequestHandle
from service.engine.scheduler import Scheduler
from service.engine.types import GenerateParams, Kind, UnderstandParams

_LOOP = asyncio.new_event_loop()
STEPS = 576


@pytest.fixture(scope="module", autouse=True)
def _close_loop():
    yield
    _LOOP.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _understand(timeout_s: float = 600.0) -> Request:
    params = UnderstandParams(prompt_ids=[1, 2], pixel_values=None, max_new_tokens=4, timeout_s=timeout_s)
    return Request(params=params, handle=RequestHandle("u", _LOOP))


def _generate(parallel_size: int = 16, timeout_s: float = 600.0) -> Request:
    params = GenerateParams(prompt_ids=[1, 2], pad_id=0, image_tokens=STEPS, parallel_size=parallel_size,
                            timeout_s=timeout_s)
    return Request(params=params, handle=RequestHandle("g", _LOOP))


def _run_to_end(scheduler: Scheduler, clock: Clock, request: Request, seconds: float) -> None:
    scheduler.add(request)
    assert scheduler.admit() == [request]
    clock.now += seconds
    if request.kind is Kind.GENERATE:
        request.steps_done = STEPS
    else:
        for answer in request.answers:
            answer.finish_reason = "stop"
    scheduler.finish(request)


def _learned(seconds_generate: float, seconds_understand: float, max_waiting: int = 64) -> tuple[Scheduler, Clock]:
    clock = Clock()
    scheduler = Scheduler(max_rows=32, max_waiting=max_waiting, clock=clock)
    _run_to_end(scheduler, clock, _generate(), seconds_generate)
    _run_to_end(scheduler, clock, _understand(), seconds_understand)
    return scheduler, clock


def test_a_request_that_would_wait_past_its_timeout_is_refused_at_once():
    # parallel_size 16 takes all 32 rows for ~60 s: with a 600 s timeout about ten fit in the queue, not 64
    scheduler, clock = _learned(60.0, 0.1)
    accepted = 0
    with pytest.raises(Overloaded, match="longer than its 600 s time limit") as refused:
        for _ in range(64):
            scheduler.add(_generate())
            accepted += 1
            if accepted == 1:
                scheduler.admit()
    assert accepted == 11  # the running one, then ten that start within 600 s (at 60, 120, ... 600 s)
    assert MIN_RETRY_AFTER_S <= refused.value.retry_after_s <= MAX_RETRY_AFTER_S


def test_a_shorter_timeout_refuses_sooner():
    scheduler, _ = _learned(60.0, 0.1)
    scheduler.add(_generate())
    scheduler.admit()
    scheduler.add(_generate(timeout_s=120.0))  # starts in ~60 s
    with pytest.raises(Overloaded):
        scheduler.add(_generate(timeout_s=100.0))  # would start in ~120 s


def test_a_running_generation_is_expected_to_end_by_its_progress():
    scheduler, clock = _learned(60.0, 0.1)
    running = _generate()
    scheduler.add(running)
    scheduler.admit()
    clock.now += 30.0
    running.steps_done = 48  # one twelfth in 30 s: 330 s to go, whatever the learned average says
    with pytest.raises(Overloaded) as refused:
        scheduler.add(_generate(timeout_s=300.0))
    assert refused.value.retry_after_s == pytest.approx(30.0)  # in 30 s the wait would be 300 s
    scheduler.add(_generate(timeout_s=340.0))


def test_retry_after_for_a_quick_request_behind_a_full_queue_is_bounded():
    # The reported case: a 0.1 s understanding request refused behind generation jobs was told to wait 30 minutes.
    scheduler, clock = _learned(60.0, 0.1, max_waiting=4)
    for _ in range(5):
        scheduler.add(_generate(timeout_s=3600.0))
    scheduler.admit()
    with pytest.raises(Overloaded, match="requests waiting") as refused:
        scheduler.add(_understand())
    # a queue place opens when the first waiting job starts, in ~60 s
    assert refused.value.retry_after_s == pytest.approx(60.0)
    clock.now += 59.0
    assert MIN_RETRY_AFTER_S <= _refusal(scheduler, _understand()).retry_after_s <= 1.5


def test_retry_after_never_exceeds_its_bound():
    scheduler, _ = _learned(3600.0, 0.1, max_waiting=2)
    for _ in range(3):
        scheduler.add(_generate(timeout_s=1e6))
    scheduler.admit()
    assert _refusal(scheduler, _understand(timeout_s=1e6)).retry_after_s == MAX_RETRY_AFTER_S


def test_without_any_finished_request_nothing_is_refused_for_time():
    clock = Clock()
    scheduler = Scheduler(max_rows=2, max_waiting=8, clock=clock)
    for _ in range(9):
        scheduler.add(_generate(parallel_size=1, timeout_s=0.001))
    scheduler.admit()


def test_cancelled_and_failed_requests_teach_nothing():
    clock = Clock()
    scheduler = Scheduler(max_rows=32, max_waiting=8, clock=clock)
    gone = _generate()
    scheduler.add(gone)
    scheduler.admit()
    clock.now += 1.0
    gone.steps_done = 3  # left early (cancelled)
    scheduler.finish(gone)
    assert scheduler.hold.known() == {}
    _run_to_end(scheduler, clock, _understand(), 2.0)
    assert scheduler.hold.known() == {Kind.UNDERSTAND: 2.0}


def _refusal(scheduler: Scheduler, request: Request) -> Overloaded:
    with pytest.raises(Overloaded) as refused:
        scheduler.add(request)
    return refused.value
