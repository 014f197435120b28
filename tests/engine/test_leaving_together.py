"""Several requests leave the running batch in one engine step while others run on.

Two requests finish, two are cancelled and two time out in the same step; the requests that stay (two
understanding rows and a generation pair) must each give exactly what the plain reference loops give alone. When
requests leave, the rows above them move down into the holes, and the moves recorded for several departures in one
step depend on each other: a row moved into a hole can itself leave in the same step and another row take its
place. Applying them in another order hands a survivor someone else's KV cache.

Admission order decides the rows (row: request):

    0 first       1 cancelled_1   2 cancelled_2   3 survivor_1   4-5 survivor_image (conditional, unconditional)
    6 survivor_2  7 timed_out_1   8 timed_out_2   9 finished_1   10 finished_2

finished_1 and finished_2 finish in step s, each departure's move applied at once; at the start of step s + 1
cancelled_1, cancelled_2, timed_out_1 and timed_out_2 go together and leave four moves, (8 -> 1), (7 -> 2), (6 -> 2),
(5 -> 1): two chains, where applied backwards survivor_2 would decode on timed_out_1's cache and survivor_image's
unconditional row on timed_out_2's.

The order of events is fixed by holding the engine in its fault hook, not by timing: the test submits everything
while the engine holds at `first`'s prefill, so the other nine are admitted together, and it cancels while the engine
holds at finished_1's last token. Only the timeout needs the clock: the engine holds until the timed-out requests'
deadline has passed. On a machine too slow to reach that point before the deadline the scenario is rerun with a
longer one (the hook's call counts show whether all four left in the same step).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from model import reference
from service.engine.errors import RequestCancelled, RequestTimeout
from service.engine.types import GenerateParams, GenerateResult, UnderstandParams, UnderstandResult

LEAVE_AT = 6  # tokens the finishing requests produce: they, and those that are dropped, leave after this many
LONG = 16  # tokens of the understanding survivors (the tiny model's images are 16 tokens too)
TIMEOUTS_S = (2.0, 8.0, 30.0)  # the timed-out requests' timeout, longer on each rerun
WAIT_S = 120.0  # bound on each wait for the engine, so a broken engine fails the test instead of hanging it

ORDER = ("first", "cancelled_1", "cancelled_2", "survivor_1", "survivor_image", "survivor_2", "timed_out_1",
         "timed_out_2", "finished_1", "finished_2")
CANCELLED = ("cancelled_1", "cancelled_2")
TIMED_OUT = ("timed_out_1", "timed_out_2")
FINISHED = ("finished_1", "finished_2")
SURVIVORS = ("first", "survivor_1", "survivor_image", "survivor_2")


class HoldingHook:
    """The engine's fault hook (called on the engine thread once per request per token): counts each request's calls
    and holds the engine at chosen points, (request name, call number), until the test releases it."""

    def __init__(self, engine: Any, names: dict[int, str], holds: list[tuple[str, int]]) -> None:
        self.engine = engine
        self.names = names  # id(params) -> name
        self.calls: Counter[str] = Counter()
        self.reached = {point: threading.Event() for point in holds}
        self.go = {point: threading.Event() for point in holds}
        self.stats_when_held: dict[tuple[str, int], dict[str, int]] = {}
        engine.fault_hook = self

    def __call__(self, request: Any) -> None:
        name = self.names.get(id(request.params))
        if name is None:
            return
        self.calls[name] += 1
        point = (name, self.calls[name])
        if point in self.reached:
            self.stats_when_held[point] = self.engine.stats()
            self.reached[point].set()
            self.go[point].wait()

    async def held_at(self, name: str, call: int) -> None:
        if not await asyncio.to_thread(self.reached[name, call].wait, WAIT_S):
            raise AssertionError(f"the engine never reached {name}'s call {call} (calls so far: {dict(self.calls)})")

    def release(self, name: str, call: int) -> None:
        self.go[name, call].set()

    def remove(self) -> None:
        for event in self.go.values():
            event.set()
        self.engine.fault_hook = None


@dataclass
class Run:
    outcomes: dict[str, Any]  # name -> result or exception
    calls: Counter[str]
    stats_at_leaving: dict[str, int]


@pytest.fixture
def cast(understand_params, generate_params, tiny_tokenizer):
    """name -> fresh params (new objects each call: the engine fills in defaults, and the hook knows them by id)."""
    temperatures = {"first": 0.0, "survivor_1": 0.8, "survivor_2": 0.0, "finished_1": 0.7, "finished_2": 0.0}

    def build(timeout_s: float) -> dict[str, UnderstandParams | GenerateParams]:
        params: dict[str, UnderstandParams | GenerateParams] = {}
        for seed, name in enumerate(ORDER, start=40):
            if name == "survivor_image":
                params[name] = generate_params(seed=seed, parallel_size=1, cfg_weight=5.0, temperature=1.0)
                continue
            tokens = LEAVE_AT if name in FINISHED else LONG
            understand = understand_params(seed=seed, max_new_tokens=tokens, temperature=temperatures.get(name, 0.5))
            understand.stop_ids = ()  # every request runs to its length, so the step each one leaves in is known
            if name in TIMED_OUT:
                understand.timeout_s = timeout_s
            params[name] = understand
        return params

    return build


async def leave_together(engine: Any, params: dict[str, UnderstandParams | GenerateParams],
                         timeout_s: float) -> Run:
    last_token = ("finished_1", LEAVE_AT)
    hook = HoldingHook(engine, {id(p): name for name, p in params.items()}, [("first", 1), last_token])
    try:
        handles = {"first": engine.submit(params["first"])}
        await hook.held_at("first", 1)  # first's prefill: the other nine queue up meanwhile
        for name in ORDER[1:]:
            handles[name] = engine.submit(params[name])
        deadline = time.perf_counter() + timeout_s  # not earlier than the timed-out requests' own deadlines
        hook.release("first", 1)
        await hook.held_at(*last_token)  # the eight before it have had their token of this step
        for name in CANCELLED:
            handles[name].cancel()
        while time.perf_counter() <= deadline:
            await asyncio.sleep(min(0.05, max(deadline - time.perf_counter(), 0.001)))
        hook.release(*last_token)
        results = await asyncio.wait_for(
            asyncio.gather(*(handles[name].result() for name in ORDER), return_exceptions=True), WAIT_S)
    finally:
        hook.remove()
    return Run(dict(zip(ORDER, results, strict=True)), hook.calls, hook.stats_when_held[last_token])


def _reference(model, params: UnderstandParams | GenerateParams) -> list[int] | np.ndarray:
    if isinstance(params, GenerateParams):
        return reference.generate(model, np.array(params.prompt_ids), params.pad_id, params.parallel_size,
                                  params.cfg_weight, params.temperature, params.seed)
    # no stop id: the reference runs to max_new_tokens like the engine
    return reference.understand(model, np.array(params.prompt_ids), params.pixel_values, params.image_id, -1,
                                params.max_new_tokens, params.temperature, params.top_p, params.seed)


def test_requests_finishing_cancelled_and_timing_out_in_one_step_leave_the_others_their_solo_results(
        make_engine, cast, tiny_model):
    engine = make_engine(max_rows=16)
    expected = {name: _reference(tiny_model, p) for name, p in cast(TIMEOUTS_S[0]).items()
                if name in SURVIVORS + FINISHED}
    for timeout_s in TIMEOUTS_S:
        run = asyncio.run(leave_together(engine, cast(timeout_s), timeout_s))
        if all(run.calls[name] == LEAVE_AT for name in TIMED_OUT):
            break
        # the machine was too slow: a timed-out request expired before the step all of them should leave in
    else:
        pytest.fail(f"the timed-out requests never lasted {LEAVE_AT} tokens: {dict(run.calls)}")

    # all ten were running in the step four of them left after: nine understanding rows and one generation pair
    assert (run.stats_at_leaving["running_understand_rows"], run.stats_at_leaving["running_generate_rows"]) == (9, 2)
    # each of the six that left had exactly LEAVE_AT tokens, so they left in the same step: finished_1 and
    # finished_2 with that step's token, the other four before the next step's
    assert {name: run.calls[name] for name in CANCELLED + TIMED_OUT + FINISHED} == \
        dict.fromkeys(CANCELLED + TIMED_OUT + FINISHED, LEAVE_AT)
    for name in CANCELLED:
        assert isinstance(run.outcomes[name], RequestCancelled), (name, run.outcomes[name])
    for name in TIMED_OUT:
        assert isinstance(run.outcomes[name], RequestTimeout), (name, run.outcomes[name])
    differing = []
    for name in SURVIVORS + FINISHED:
        got = run.outcomes[name]
        if isinstance(expected[name], np.ndarray):
            assert isinstance(got, GenerateResult), (name, got)
            same = np.array_equal(got.tokens, expected[name])
        else:
            assert isinstance(got, UnderstandResult), (name, got)
            same = got.token_ids == expected[name]
        if not same:
            differing.append(name)
    assert not differing, f"outputs that differ from their solo runs: {differing}"
    assert run.calls["survivor_1"] == run.calls["survivor_2"] == LONG  # they ran on well past the departures
    assert engine.stats()["free_rows"] == 16
