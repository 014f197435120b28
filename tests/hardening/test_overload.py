"""Ten times the server's capacity at once: every request is answered (200, or 429 with Retry-After), none hangs,
the admitted ones give exactly their solo results, and the server is healthy and serves normally afterwards.

Capacity = KV rows + waiting queue (4 + 4 here): understanding takes one row, generation with guidance two.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.hardening.helpers import (
    StepHook,
    assert_error_body,
    essence,
    generate_request,
    poll_until,
    send_together,
    understand_request,
)
from tests.service.helpers import LiveServer, sse_events, wait_until

ROWS, WAITING = 4, 4
BURST = 10 * (ROWS + WAITING)
REQUEST_TIMEOUT_S = 60.0  # per request; nothing on the tiny model comes near it unless something hangs


def variants() -> list[tuple[str, dict[str, Any]]]:
    """Six kinds of request (plain and streamed), repeated through the burst."""
    return [
        ("/understand", understand_request(seed=1)),
        ("/generate", generate_request(seed=2)),
        ("/understand", {**understand_request(seed=3, temperature=0.0), "stream": True}),
        ("/generate", {**generate_request(seed=4), "cfg_weight": 1.0}),
        ("/understand", understand_request(seed=5, max_new_tokens=10)),
        ("/generate", {**generate_request(seed=6), "stream": True}),
    ]


def outcome(path: str, reply: httpx.Response) -> object:
    """The essence of a 200 answer, plain or streamed (the final `done` event of a stream)."""
    if reply.headers["content-type"].startswith("text/event-stream"):
        *_, last = sse_events(iter(reply.text.splitlines()))
        assert last.event == "done", last
        return essence(path, last.data)
    return essence(path, reply.json())


def solo_outcomes(live: LiveServer) -> list[object]:
    with live.client() as http:
        return [outcome(path, http.post(path, json=payload)) for path, payload in variants()]


def burst() -> list[tuple[str, dict[str, Any]]]:
    kinds = variants()
    return [kinds[i % len(kinds)] for i in range(BURST)]


def assert_answered(replies: list[httpx.Response], solo: list[object]) -> tuple[int, int]:
    """Every reply is a 200 equal to its solo run, or a 429 with Retry-After and the error body."""
    ok = refused = 0
    for i, reply in enumerate(replies):
        path = variants()[i % len(solo)][0]
        if reply.status_code == 200:
            assert outcome(path, reply) == solo[i % len(solo)], f"request {i} ({path}) differs from its solo run"
            ok += 1
        else:
            assert_error_body(reply, 429, "overloaded")
            assert int(reply.headers["retry-after"]) >= 1
            refused += 1
    return ok, refused


def assert_serves_normally(live: LiveServer, solo: list[object]) -> None:
    wait_until(lambda: live.runtime.engine.stats()["free_rows"] == ROWS, "every row to be free again")
    with live.client() as http:
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200
        metrics = http.get("/metrics").text
        assert "janus_queue_waiting_requests 0.0" in metrics and f"janus_free_rows {float(ROWS)}" in metrics
        path, payload = variants()[1]
        after = http.post(path, json=payload)
    assert after.status_code == 200, after.text
    assert outcome(path, after) == solo[1]


def test_a_burst_of_ten_times_capacity_against_a_held_engine_admits_exactly_capacity(make_server):
    """The engine is held inside its first step while the burst arrives, so the accounting is exact: the
    requests already admitted, those the free rows will take at the next step, and a full queue get 200 after the
    release; everyone else 429 at once."""
    live = make_server(max_rows=ROWS, max_waiting=WAITING)
    solo = solo_outcomes(live)
    hook = StepHook(live.runtime.engine)
    engine = live.runtime.engine
    admitted: dict[str, int] = {}

    def only_the_admitted_are_left(tasks: list[asyncio.Task[httpx.Response]]) -> bool:
        queued = engine.stats()["waiting"]  # requests the free rows take next, then up to WAITING more
        if not hook.held.is_set() or queued < WAITING:
            return False
        admitted["running"] = len(engine.scheduler.running)  # fixed while the engine is held
        admitted["queued"] = queued
        return sum(task.done() for task in tasks) == BURST - admitted["running"] - queued

    async def release_when_the_rest_are_refused(tasks: list[asyncio.Task[httpx.Response]]) -> None:
        await poll_until(lambda: only_the_admitted_are_left(tasks), "every request past capacity to get its 429")
        hook.release()

    try:
        replies = send_together(live.url, burst(), release_when_the_rest_are_refused, REQUEST_TIMEOUT_S)
    finally:
        hook.remove()
    ok, refused = assert_answered(replies, solo)
    assert ok == admitted["running"] + admitted["queued"] and refused == BURST - ok
    # the queue is bounded: beyond WAITING, only what fits the free rows (at least a row per request)
    assert refused > 0 and admitted["queued"] <= WAITING + ROWS
    assert live.metric("janus_error_responses_total", type="overloaded") == refused
    assert_serves_normally(live, solo)


def test_a_burst_of_ten_times_capacity_against_a_running_engine_gets_only_200_or_429(make_server):
    live = make_server(max_rows=ROWS, max_waiting=WAITING)
    solo = solo_outcomes(live)
    replies = send_together(live.url, burst(), timeout_s=REQUEST_TIMEOUT_S)
    ok, refused = assert_answered(replies, solo)
    assert ok + refused == BURST and ok >= ROWS // 2
    assert live.metric("janus_error_responses_total", type="overloaded") == refused
    assert_serves_normally(live, solo)


def test_without_a_waiting_queue_a_request_that_fits_the_free_rows_is_served(make_server):
    live = make_server(max_waiting=0)
    with live.client() as http:
        reply = http.post("/generate", json=generate_request(seed=1))
    assert reply.status_code == 200, reply.text
