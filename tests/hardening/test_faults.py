"""Faults while other requests run, beyond tests/service (which fails requests one at a time and disconnects a
client before its first step): a failure in the middle of a shared batch, a failed image decode among requests
finishing in the same step, a client leaving in the middle of a generation next to another request, and SIGTERM on
a `janus-serve` process with several requests in flight.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.hardening.helpers import (
    AdmissionGate,
    StepHook,
    assert_error_body,
    essence,
    generate_request,
    poll_until,
    send_together,
    understand_request,
)
from tests.service.helpers import LiveServer, sse_events, wait_until

VICTIM_SEED = 666


def solo(live: LiveServer, requests: list[tuple[str, dict[str, Any]]]) -> list[object]:
    with live.client() as http:
        replies = [http.post(path, json=payload) for path, payload in requests]
    assert all(reply.status_code == 200 for reply in replies), [reply.text for reply in replies]
    return [essence(path, reply.json()) for (path, _), reply in zip(requests, replies, strict=True)]


def send_admitted_together(live: LiveServer, requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """Queue every request while admission is held, then let the engine admit them all in one step."""
    engine = live.runtime.engine
    gate = AdmissionGate(engine)

    async def admit_all_at_once(tasks: list[Any]) -> None:
        await poll_until(lambda: engine.stats()["waiting"] == len(requests), "every request to queue up")
        gate.release()

    try:
        return send_together(live.url, requests, admit_all_at_once)
    finally:
        gate.remove()


def metrics(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = http.get("/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_an_exception_in_one_request_mid_batch_fails_only_it_and_the_others_give_their_solo_results(make_server):
    live = make_server(max_rows=16)
    others = [("/understand", understand_request(seed=11, max_new_tokens=12)),
              ("/generate", generate_request(seed=12, parallel_size=2)),
              ("/understand", understand_request(seed=13, max_new_tokens=12, temperature=0.0)),
              ("/generate", {**generate_request(seed=14), "cfg_weight": 1.0})]
    expected = solo(live, others)
    engine = live.runtime.engine
    at_fault: list[dict[str, int]] = []

    def fail_the_victim_at_step_5(request: Any) -> None:
        if request.params.seed == VICTIM_SEED and request.steps_done == 5:
            at_fault.append(engine.stats())
            raise RuntimeError("injected fault at step 5")

    victim = ("/generate", generate_request(seed=VICTIM_SEED, parallel_size=2))
    hook = StepHook(engine, fail_the_victim_at_step_5, hold=False)
    try:
        replies = send_admitted_together(live, [others[0], others[1], victim, others[2], others[3]])
    finally:
        hook.remove()
    error = assert_error_body(replies[2], 500, "model_error")
    assert "injected fault at step 5" in error["message"]
    assert [reply.status_code for i, reply in enumerate(replies) if i != 2] == [200] * 4
    assert [essence(path, reply.json()) for (path, _), reply in zip(others, replies[:2] + replies[3:], strict=True)] \
        == expected
    # it failed mid-batch: every other request's rows were running in that step (generation: 4 + 4 + 1 rows)
    assert at_fault and (at_fault[0]["running_understand_rows"], at_fault[0]["running_generate_rows"]) == (2, 9)
    assert live.metric("janus_engine_failures_total", kind="model") == 1
    wait_until(lambda: engine.stats()["free_rows"] == 16, "every row to be free again")
    with live.client() as http:
        assert http.get("/health").status_code == 200
        path, payload = others[1]
        assert essence(path, http.post(path, json=payload).json()) == expected[1]


def test_a_failed_image_decode_fails_only_its_request_among_those_finishing_in_the_same_step(make_server):
    live = make_server(max_rows=16)
    others = [("/generate", generate_request(seed=21, parallel_size=2)), ("/generate", generate_request(seed=22))]
    expected = solo(live, others)
    engine = live.runtime.engine
    runner = engine.runner
    victims: list[Any] = []
    decoded_batches: list[int] = []
    decode_images = runner.decode_images

    def note_the_victim(request: Any) -> None:
        if request.params.seed == VICTIM_SEED and not victims:
            victims.append(request)

    def decode_failing_for_the_victim(tokens: np.ndarray) -> np.ndarray:
        decoded_batches.append(len(tokens))
        if any(np.array_equal(row, victims[0].image_tokens[0]) for row in tokens):
            raise RuntimeError("injected decode fault")
        return decode_images(tokens)

    hook = StepHook(engine, note_the_victim, hold=False)
    runner.decode_images = decode_failing_for_the_victim
    try:
        replies = send_admitted_together(live, [others[0], ("/generate", generate_request(seed=VICTIM_SEED)),
                                                others[1]])
    finally:
        del runner.decode_images
        hook.remove()
    error = assert_error_body(replies[1], 500, "model_error")
    assert "image decoding failed: injected decode fault" in error["message"]
    assert replies[0].status_code == replies[2].status_code == 200
    assert [essence("/generate", replies[0].json()), essence("/generate", replies[2].json())] == expected
    # the images are decoded one at a time: the victim's one failed call, the others' three
    assert decoded_batches == [1, 1, 1, 1]


def test_a_client_leaving_mid_generation_frees_its_rows_while_its_neighbour_finishes(make_server):
    live = make_server(max_rows=8, progress_every=2)
    neighbour = ("/understand", understand_request(seed=31, max_new_tokens=24))
    expected = solo(live, [neighbour])
    engine = live.runtime.engine
    at_leave: list[dict[str, int]] = []

    def wait_after_the_first_progress_for_the_client_to_leave(request: Any) -> None:
        if request.params.seed != 777:
            return
        if request.steps_done == 1 and not at_leave:
            # both requests are running, and no progress event has gone out yet: what the client leaves behind
            at_leave.append(engine.stats())
        if request.steps_done == 2:
            # the first progress event (2 of 16 tokens) is out: hold the engine until the server has seen the
            # client leave (the engine may also notice first and drop the request before this step), so the
            # disconnect surely lands mid-generation
            deadline = time.monotonic() + 30
            while not request.handle.cancelled and time.monotonic() < deadline:
                time.sleep(0.005)

    hook = StepHook(engine, wait_after_the_first_progress_for_the_client_to_leave, hold=False)
    gate = AdmissionGate(engine)
    out: dict[str, httpx.Response] = {}

    def post_neighbour() -> None:
        with live.client() as http:
            out["reply"] = http.post(neighbour[0], json=neighbour[1])

    thread = threading.Thread(target=post_neighbour, daemon=True)
    try:
        thread.start()
        with live.client() as http, http.stream("POST", "/generate", json={
                **generate_request(seed=777, parallel_size=2), "stream": True}) as stream:
            assert stream.status_code == 200
            wait_until(lambda: engine.stats()["waiting"] == 2, "both requests to queue up")
            gate.release()
            events = sse_events(stream.iter_lines())
            first = next(events)
            assert first.event == "progress" and first.data["steps_done"] == 2 and first.data["steps_total"] == 16
        # the connection is closed here, 2 image tokens into 16
        thread.join(60)
    finally:
        gate.remove()
        hook.remove()
    assert at_leave and at_leave[0]["running_generate_rows"] == 4 and at_leave[0]["running_understand_rows"] == 1
    assert out["reply"].status_code == 200 and essence(neighbour[0], out["reply"].json()) == expected[0]
    wait_until(lambda: engine.stats()["free_rows"] == 8, "the abandoned rows to be freed")
    with live.client() as http:
        seen = metrics(http)
        assert seen[("janus_free_rows", frozenset())] == 8
        assert seen[("janus_running_rows", frozenset({("kind", "generate")}))] == 0
        assert seen[("janus_engine_failures_total", frozenset({("kind", "cancelled")}))] == 1
        after = http.post("/generate", json=generate_request(seed=777, parallel_size=2))
    assert after.status_code == 200 and len(after.json()["images"]) == 2


# SIGTERM on a real process


# A connection refused, or closed by the server before it answered; never a timeout.
REFUSED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)
LONG_ANSWER = 600  # tokens: a few seconds on the tiny model, so the requests are surely running at the signal


def test_sigterm_with_requests_in_flight_finishes_them_refuses_new_ones_and_exits(server_process):
    drain_s = 60
    proc = server_process("--max-rows", "8", "--drain-timeout-s", str(drain_s), "--log-level", "info")
    plain = [understand_request(seed=s, max_new_tokens=LONG_ANSWER, temperature=0.0) for s in (41, 42, 43)]
    streamed = [{**understand_request(seed=s, max_new_tokens=LONG_ANSWER, temperature=0.0), "stream": True}
                for s in (44, 45)]
    replies: dict[int, httpx.Response] = {}
    stream_events: dict[int, list[Any]] = {}
    streaming = [threading.Event() for _ in streamed]

    def post(i: int) -> None:
        with proc.client(timeout=120) as http:
            replies[i] = http.post("/understand", json=plain[i])

    def stream(i: int) -> None:
        with proc.client(timeout=120) as http, http.stream("POST", "/understand", json=streamed[i]) as reply:
            events = []
            for event in sse_events(reply.iter_lines()):
                events.append(event)
                streaming[i].set()
            stream_events[i] = events

    threads = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(len(plain))]
    threads += [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(len(streamed))]
    for thread in threads:
        thread.start()

    def all_running() -> bool:
        if not all(event.is_set() for event in streaming):
            return False
        with proc.client() as http:
            return metrics(http)[("janus_running_rows", frozenset({("kind", "understand")}))] == 5

    wait_until(all_running, "all five requests to be running")
    proc.terminate()

    def not_ready() -> bool:
        try:
            return httpx.get(f"{proc.url}/ready", timeout=5).status_code == 503
        except REFUSED:
            return True

    wait_until(not_ready, "the server to stop taking requests")
    try:
        late = httpx.post(f"{proc.url}/understand", json=plain[0], timeout=30)
    except REFUSED:
        late = None  # refused at the socket: as good as a 503 (a timeout is neither, and fails the test)
    if late is not None:
        assert_error_body(late, 503)
    wait_until(proc.refuses_connections, "the listening socket to close")
    for thread in threads:
        thread.join(120)
    for i in range(len(plain)):
        assert replies[i].status_code == 200, replies[i].text
        assert replies[i].json()["usage"]["completion_tokens"] > 0
    for i in range(len(streamed)):
        assert stream_events[i][-1].event == "done", stream_events[i][-1]
    # uvicorn re-raises the signal after its graceful shutdown: "terminated by SIGTERM" is the clean end here
    assert proc.process.wait(timeout=drain_s + 30) in (0, -signal.SIGTERM)
    log = proc.log_text()
    assert "engine stopped" in log and "Traceback" not in log
