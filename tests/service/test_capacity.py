"""Capacity and lifetime of requests: 429 when full, cancellation on disconnect, timeouts, failures stay local.

An `EngineGate` holds the engine thread inside a step, so "this request is running" is established, not raced.
"""

from __future__ import annotations

import json
import socket
import time

from service.engine import Engine
from tests.service.helpers import LiveServer, b64, image_bytes, post_in_background, sse_events, wait_until

UNDERSTAND = {"question": "What is it?", "images": [b64(image_bytes(seed=0))], "max_new_tokens": 4}


def rows_all_free(live: LiveServer) -> bool:
    stats = live.runtime.engine.stats()
    return stats["free_rows"] == live.runtime.settings.max_rows and stats["waiting"] == 0


def test_a_full_server_answers_429_with_retry_after_and_serves_the_admitted_requests(make_server):
    live = make_server(max_rows=2, max_waiting=1)
    gate = live.gate()
    first, first_out = post_in_background(live, "/generate", {"prompt": "a fox", "seed": 1})  # both rows
    wait_until(lambda: gate.seen, "the first request to run")
    second, second_out = post_in_background(live, "/understand", UNDERSTAND)
    wait_until(lambda: live.runtime.engine.stats()["waiting"] == 1, "the second request to wait")
    with live.client() as http:
        refused = http.post("/understand", json=UNDERSTAND)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    gate.release()
    first.join(60)
    second.join(60)
    assert first_out["reply"].status_code == 200 and second_out["reply"].status_code == 200
    assert live.metric("janus_error_responses_total", type="overloaded") == 1


def test_a_client_leaving_a_stream_cancels_its_request_and_frees_its_rows(make_server):
    live = make_server(max_rows=4)
    gate = live.gate()
    with live.client() as http, http.stream("POST", "/generate", json={"prompt": "a fox", "stream": True}) as reply:
        assert reply.status_code == 200
        wait_until(lambda: gate.seen, "the request to run")
        assert live.runtime.engine.stats()["free_rows"] == 2
    # the connection is closed here, mid-stream
    wait_until(lambda: gate.seen[0].handle.cancelled, "the server to cancel the abandoned request")
    gate.release()
    wait_until(lambda: rows_all_free(live), "its rows to be freed")
    wait_until(lambda: live.metric("janus_engine_failures_total", kind="cancelled") == 1, "the cancel to count")


def test_a_client_leaving_before_a_plain_answer_cancels_its_request_and_frees_its_rows(make_server):
    live = make_server(max_rows=4)
    gate = live.gate()
    body = json.dumps({"prompt": "a fox", "parallel_size": 2}).encode()
    with socket.create_connection(("127.0.0.1", live.port)) as raw:
        raw.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: gate.seen, "the request to run")
        assert live.runtime.engine.stats()["free_rows"] == 0
    wait_until(lambda: gate.seen[0].handle.cancelled, "the server to cancel the abandoned request")
    gate.release()
    wait_until(lambda: rows_all_free(live), "its rows to be freed")
    assert live.metric("janus_engine_failures_total", kind="cancelled") == 1


def test_a_request_over_its_time_limit_gets_504(make_server):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    thread, out = post_in_background(live, "/generate", {"prompt": "a fox"})
    wait_until(lambda: gate.seen, "the request to run")
    deadline = gate.seen[0].deadline
    wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
    gate.release()
    thread.join(60)
    reply = out["reply"]
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["type"] == "timeout"
    wait_until(lambda: rows_all_free(live), "its rows to be freed")


def test_a_stream_over_its_time_limit_ends_with_an_error_event(make_server):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    with live.client() as http, http.stream("POST", "/understand", json={**UNDERSTAND, "stream": True}) as reply:
        wait_until(lambda: gate.seen, "the request to run")
        deadline = gate.seen[0].deadline
        wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
        gate.release()
        events = list(sse_events(reply.iter_lines()))
    assert events[-1].event == "error"
    assert events[-1].data["error"]["type"] == "timeout" and events[-1].data["error"]["status"] == 504


def test_a_failure_inside_one_request_fails_only_that_request(make_server):
    live = make_server()

    def fail_seed_666(request) -> None:
        if request.params.seed == 666:
            raise RuntimeError("injected fault")

    live.runtime.engine.fault_hook = fail_seed_666
    with live.client() as http:
        failed = http.post("/generate", json={"prompt": "a fox", "seed": 666})
        fine = http.post("/generate", json={"prompt": "a fox", "seed": 1})
        with http.stream("POST", "/understand", json={**UNDERSTAND, "seed": 666, "temperature": 1,
                                                      "stream": True}) as reply:
            events = list(sse_events(reply.iter_lines()))
        health = http.get("/health")
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "model_error"
    assert "injected fault" in failed.json()["error"]["message"]
    assert fine.status_code == 200
    assert events[-1].event == "error" and events[-1].data["error"]["type"] == "model_error"
    assert health.status_code == 200
    assert live.metric("janus_engine_failures_total", kind="model") == 2


def test_a_stopped_engine_makes_health_ready_and_inference_answer_503(make_server):
    live = make_server()
    live.runtime.engine.shutdown(0)
    with live.client() as http:
        replies = [http.get("/health"), http.get("/ready"), http.post("/generate", json={"prompt": "a fox"})]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["status"] == 503 and int(reply.headers["retry-after"]) >= 1


def test_requests_are_refused_while_the_model_warms_up(make_server, monkeypatch):
    live = make_server()
    # Warm-up takes a moment on the tiny model; pretend it is still going through the public `ready` flag.
    monkeypatch.setattr(Engine, "ready", property(lambda self: False))
    with live.client() as http:
        ready, health = http.get("/ready"), http.get("/health")
        refused = http.post("/generate", json={"prompt": "a fox"})
    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json()["error"]["type"] == "not_ready"
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "not_ready"


def test_a_bug_in_the_api_layer_answers_500_in_the_same_error_body_without_details(make_server):
    live = make_server()

    class Broken:
        def generate(self, *args, **kwargs):
            raise KeyError("secret internal detail")

    live.runtime.preprocessor = Broken()  # type: ignore[assignment]
    with live.client() as http:
        reply = http.post("/generate", json={"prompt": "a fox"})
        health = http.get("/health")
    assert reply.status_code == 500
    assert reply.json() == {"error": {"type": "internal_error", "message": "internal server error", "status": 500}}
    assert health.status_code == 200
