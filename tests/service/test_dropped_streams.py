"""A client that reads a few events of a stream and then closes the connection is counted with status 499 in
`janus_request_duration_seconds` (not 200), on each of the four streaming routes, read from GET /metrics.

The engine is held near the end of each request until the server has seen the client leave, so the stream cannot
finish on its own before the client closes it: the disconnect surely lands mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.engine.types import GenerateParams
from tests.service.helpers import LiveServer, b64, image_bytes, sse_events, start_server, test_settings, wait_until

EVENTS_READ = 4
MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def live(tiny_dir: Path) -> Iterator[LiveServer]:
    server = start_server(test_settings(tiny_dir, progress_every=2))  # progress events out before the last step
    yield server
    server.stop()


@pytest.fixture
def held_until_the_client_leaves(live: LiveServer) -> Iterator[None]:
    """At the request's last step (every event but the end is out by then), the engine waits until the server
    has cancelled the request for its departed client."""
    engine = live.runtime.engine
    stuck: list[str] = []

    def hold(request: Any) -> None:
        params = request.params
        if isinstance(params, GenerateParams):
            # each preview is decoded before the next step, so none is replaced by a newer one unseen
            wait_until(lambda: engine.images.idle, "the previews to be decoded")
            near_the_end = request.steps_done == params.image_tokens - 1
        else:
            near_the_end = len(request.answers[0].tokens) == params.max_new_tokens - 1
        deadline = time.monotonic() + 30
        while near_the_end and not request.handle.cancelled:
            if time.monotonic() > deadline:
                stuck.append(request.id)
                break
            time.sleep(0.005)

    engine.fault_hook = hold
    yield
    engine.fault_hook = None
    assert not stuck, f"the client never left {stuck} (it waited for an event held back with the engine)"


def request_counts(live: LiveServer, route: str) -> dict[str, float]:
    """`janus_request_duration_seconds_count` of `route` by status, as GET /metrics shows it."""
    text = httpx.get(f"{live.url}/metrics", timeout=30).text
    return {sample.labels["status"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "janus_request_duration_seconds_count" and sample.labels["route"] == route}


def sdk(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def read_native(path: str, body: dict[str, Any]) -> Callable[[LiveServer], list[str]]:
    def read(live: LiveServer) -> list[str]:
        with live.client() as http, http.stream("POST", path, json=body) as reply:
            assert reply.status_code == 200, reply.read()
            names = []
            for event in sse_events(reply.iter_lines()):
                names.append(event.event)
                if len(names) == EVENTS_READ:
                    break
        return names  # the connection is closed on leaving the block, mid-stream

    return read


def read_chat(live: LiveServer) -> list[str]:
    stream = sdk(live).chat.completions.create(
        model="janus", stream=True, max_tokens=MAX_NEW_TOKENS, seed=3, temperature=1,
        messages=[{"role": "user", "content": "Describe a red fox in the snow."}])
    names = []
    for chunk in stream:
        names.append(chunk.object)
        if len(names) == EVENTS_READ:
            break
    stream.close()
    return names


def read_images(live: LiveServer) -> list[str]:
    # two images with two previews each: four partial-image events before the end
    stream = sdk(live).images.generate(prompt="a red fox in the snow", n=2, stream=True, partial_images=2,
                                       extra_body={"seed": 5})
    names = []
    for event in stream:
        names.append(event.type)
        if len(names) == EVENTS_READ:
            break
    stream.close()
    return names


CASES = {
    "/generate/stream": (read_native("/generate/stream", {"prompt": "a fox", "seed": 1}), {"progress"}),
    "/understand/stream": (read_native("/understand/stream", {
        "question": "What is it?", "images": [b64(image_bytes(seed=4))], "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": 1, "seed": 9}), {"delta"}),
    "/v1/chat/completions": (read_chat, {"chat.completion.chunk"}),
    "/v1/images/generations": (read_images, {"image_generation.partial_image"}),
}


@pytest.mark.parametrize("route", list(CASES))
def test_a_stream_the_client_closes_midway_counts_as_499_not_200(live, held_until_the_client_leaves, route):
    read, kinds = CASES[route]
    before = request_counts(live, route)
    names = read(live)
    assert len(names) == EVENTS_READ and set(names) == kinds, names  # it was mid-stream when the client left
    wait_until(lambda: sum(request_counts(live, route).values()) == sum(before.values()) + 1,
               "the server to count the request")
    after = request_counts(live, route)
    assert after.get("499", 0) - before.get("499", 0) == 1, (before, after)
    assert after.get("200", 0) == before.get("200", 0), (before, after)


@pytest.mark.parametrize("route", ["/generate/stream", "/understand/stream"])
def test_a_stream_read_to_its_end_still_counts_as_200(live, route):
    body = {"prompt": "a fox", "seed": 1} if route == "/generate/stream" else {
        "question": "What is it?", "images": [b64(image_bytes(seed=4))], "max_new_tokens": 4}
    before = request_counts(live, route)
    with live.client() as http, http.stream("POST", route, json=body) as reply:
        names = [event.event for event in sse_events(reply.iter_lines())]
    assert names[-1] == "done", names
    wait_until(lambda: sum(request_counts(live, route).values()) == sum(before.values()) + 1,
               "the server to count the request")
    after = request_counts(live, route)
    assert after.get("200", 0) - before.get("200", 0) == 1, (before, after)


def test_a_response_the_app_abandons_midway_counts_as_500_and_one_it_finishes_as_its_status():
    from service.api.middleware import ObserveMiddleware
    from service.metrics import Metrics

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: progress\n\n", "more_body": True})
        if scope["path"] == "/fails":
            raise RuntimeError("a bug mid-stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    metrics = Metrics()
    observed = ObserveMiddleware(app, metrics, random_weights=False)
    with pytest.raises(RuntimeError):
        asyncio.run(observed({"type": "http", "path": "/fails", "headers": []}, receive, send))
    asyncio.run(observed({"type": "http", "path": "/ends", "headers": []}, receive, send))

    def count(status: str) -> float | None:
        return metrics.registry.get_sample_value("janus_request_duration_seconds_count",
                                                 {"route": "unmatched", "status": status})

    assert (count("500"), count("200"), count("499")) == (1, 1, None)
