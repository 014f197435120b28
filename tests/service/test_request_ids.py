"""`X-Request-Id` on every response, errors included: the engine request's id once there is one (the id a successful
answer carries), else one the server makes for the HTTP request; and engine ids that do not start over when the
server restarts."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.hardening.helpers import spawn_server
from tests.service.helpers import post_in_background, wait_until


def test_error_responses_before_any_engine_request_carry_an_id_of_their_own(make_server):
    live = make_server(api_key="secret", max_body_bytes=1024)
    key = {"Authorization": "Bearer secret"}
    with live.client() as http:
        replies = {
            400: http.post("/generate", content=b"{not json", headers={**key, "Content-Type": "application/json"}),
            401: http.post("/generate", json={"prompt": "a fox"}),
            404: http.get("/no-such-route", headers=key),
            413: http.post("/generate", json={"prompt": "x" * 2000}, headers=key),
            415: http.post("/generate", content=b"a fox", headers={**key, "Content-Type": "text/plain"}),
            422: http.post("/generate", json={"prompt": "a fox", "parallel_size": 0}, headers=key),
            "422 on /v1": http.post("/v1/chat/completions", headers=key,
                                    json={"model": "janus", "messages": [], "temperature": 9}),
        }
        success = http.post("/understand", json={"question": "Hi?", "max_new_tokens": 2}, headers=key)
    ids = {}
    for status, reply in replies.items():
        assert reply.status_code == int(str(status)[:3]), (status, reply.text)
        ids[status] = reply.headers.get("x-request-id")
        assert ids[status], f"the {status} response has no X-Request-Id"
    assert len(set(ids.values())) == len(ids), ids  # one id per HTTP request
    assert success.status_code == 200 and success.headers["x-request-id"] == success.json()["id"]
    assert success.json()["id"] not in ids.values()
    # the header is set once, not added beside the route's own
    assert len(success.headers.get_list("x-request-id")) == 1


@pytest.mark.parametrize(("path", "body"), [("/generate", {"prompt": "a fox"}),
                                           ("/understand", {"question": "What is it?", "max_new_tokens": 4})])
def test_an_error_after_the_engine_took_the_request_carries_the_engine_requests_id(make_server, path, body):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    thread, out = post_in_background(live, path, body)
    wait_until(lambda: gate.seen, "the request to run")
    engine_id, deadline = gate.seen[0].id, gate.seen[0].deadline
    wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
    gate.release()
    thread.join(60)
    reply = out["reply"]
    assert reply.status_code == 504, reply.text
    assert reply.headers.get("x-request-id") == engine_id


def test_an_openai_error_after_the_engine_took_the_request_carries_the_engine_requests_id(make_server):
    live = make_server(request_timeout_s=0.5)
    gate = live.gate()
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    out: dict = {}

    def chat() -> None:
        try:
            client.chat.completions.create(model="janus", max_tokens=4,
                                           messages=[{"role": "user", "content": "Hello?"}])
        except openai.APIStatusError as error:
            out["error"] = error

    thread = threading.Thread(target=chat, daemon=True)
    thread.start()
    wait_until(lambda: gate.seen, "the request to run")
    engine_id, deadline = gate.seen[0].id, gate.seen[0].deadline
    wait_until(lambda: time.perf_counter() > deadline, "the request's deadline to pass")
    gate.release()
    thread.join(60)
    error = out["error"]
    assert error.status_code == 504
    assert error.response.headers.get("x-request-id") == engine_id


def test_engine_request_ids_do_not_start_over_when_the_server_restarts(tiny_dir, tmp_path):
    ids = []
    for _ in range(2):  # the same server started twice, as after a crash or a deployment
        process = spawn_server(tiny_dir, tmp_path)
        try:
            with process.client() as http:
                for _ in range(2):
                    reply = http.post("/understand", json={"question": "Hi?", "max_new_tokens": 2})
                    assert reply.status_code == 200, reply.text
                    ids.append(reply.json()["id"])
        finally:
            process.kill()
    assert len(set(ids)) == 4, ids
    assert all(len(request_id) <= 24 and request_id.isascii() for request_id in ids), ids  # short, readable
