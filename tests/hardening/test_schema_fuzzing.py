"""schemathesis against the committed openapi.yaml, on a live tiny-model server.

Every operation gets generated requests, valid ones (positive) and, for the routes with a body, invalid ones
(negative). Checks on every answer: no 5xx; the status code is documented for the operation; the content type and
headers (Retry-After) are the documented ones; JSON bodies validate against their schemas; requests that violate
the schema are refused with a 4xx. Event streams are read to the end and checked event by event here, since the
document describes a stream as one string (with each event's schema named in `x-sse-events`).

Streaming is documented as operations of their own (`/understand/stream`, `/understand/upload/stream`,
`/generate/stream`): the plain operations document only their JSON answer, so that generated clients type it as
what it is. Their `stream: true`, kept for existing clients, answers with the same stream as the stream operation
(one code path), which the fuzzer covers there; a generated `stream: true` on a plain operation is sent as
`stream: false`, whose answer is the one the plain operation documents.

The default run is bounded (a few dozen derandomized examples per operation); the `slow` variant fuzzes
much longer with fresh randomness.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hardening.helpers import ROOT, essence
from tests.service.helpers import LiveServer, b64, image_bytes, sse_events, start_server, test_settings

SPEC_PATH = ROOT / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
# The statuses of the error table that mean "your request is wrong" (a refused invalid request must get one).
REFUSALS = ["400", "401", "413", "415", "422"]
CONFIG = schemathesis.Config.from_dict({
    "max-stream-events": 100_000,  # read streams to their end (the default stops after 20 events)
    "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
})
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)
OPERATIONS = [(method.upper(), path) for path, item in SPEC["paths"].items() for method in item]
WITH_BODY = [(method, path) for method, path in OPERATIONS if "requestBody" in SPEC["paths"][path][method.lower()]]
STREAM_EVENTS = {"/understand/stream": {"delta"}, "/understand/upload/stream": {"delta"},
                 "/generate/stream": {"progress", "preview", "decoding"}}
# The plain operations whose request has a `stream` field (see above).
PLAIN_WITH_STREAM_FIELD = {"/understand", "/understand/upload", "/generate"}
API_KEY = "fuzz-key-0123456789"

PICTURES = [image_bytes(size=(24 + 4 * i, 20), seed=40 + i) for i in range(8)]
PLACEHOLDER = "<image_placeholder>"


def _validator(component: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{component}", "components": SPEC["components"]})


RESULT_SCHEMAS = {"/understand/stream": _validator("UnderstandResponse"),
                  "/understand/upload/stream": _validator("UnderstandResponse"),
                  "/generate/stream": _validator("GenerateResponse")}
ERROR_SCHEMA = _validator("ErrorResponse")
OPENAI_ERROR_SCHEMA = _validator("OpenAIErrorResponse")
CHUNK_SCHEMA = _validator("ChatCompletionChunk")


def _checks(path: str, mode: GenerationMode, streamed: bool, with_key: bool) -> list[Any]:
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance]
    if not streamed:
        checks.append(response_schema_conformance)
    # Multipart fields are all text on the wire: a "wrong type" value (false for a string, [] for a number)
    # often reads as a valid one there, so only JSON bodies can be held to strict rejection.
    if mode is GenerationMode.NEGATIVE and not path.startswith("/understand/upload"):
        checks.append(negative_data_rejection)
    if with_key:
        checks.append(ignored_auth)
    return checks


def _with_real_pictures(case: Any) -> None:
    """Swap the generated image strings or files for decodable pictures, one per tag in the question."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("question"), str):
        return
    count = min(max(body["question"].count(PLACEHOLDER), 1), len(PICTURES))
    if isinstance(body.get("images"), list):
        body["images"] = [b64(picture) for picture in PICTURES[:count]]
    elif isinstance(body.get("image"), list):
        body["image"] = list(PICTURES[:count])


def _without_stream(path: str, case: Any) -> None:
    """A plain operation's `stream: true` (a JSON true, or the text of a form field) sent as `stream: false`."""
    body = case.body
    if path in PLAIN_WITH_STREAM_FIELD and isinstance(body, dict) and str(body.get("stream")).lower() == "true":
        body["stream"] = False


def _check_openai_stream(content: bytes) -> None:
    """A /v1 stream: `chat.completion.chunk` objects (or one error that is not the server's fault), then [DONE]."""
    data = [line[len("data:"):].strip() for line in content.decode("utf-8").splitlines() if line.startswith("data:")]
    assert data and data[-1] == "[DONE]", f"the stream did not end with [DONE]: {data[-1:]}"
    for payload in map(json.loads, data[:-1]):
        if "error" in payload:
            assert not list(OPENAI_ERROR_SCHEMA.iter_errors(payload)), payload
            assert payload["error"]["type"] != "server_error", f"a server error inside a stream: {payload}"
        else:
            errors = sorted(CHUNK_SCHEMA.iter_errors(payload), key=str)
            assert not errors, f"a chunk does not match the chunk schema: {errors[0].message}"


def _check_openai_image_stream(content: bytes) -> None:
    """A /v1/images/generations stream: partial images, then one completed event per image (or one error that is
    not the server's fault); each event's `type` is its name and carries a decodable image."""
    events = list(sse_events(iter(content.decode("utf-8").splitlines())))
    assert events, "an empty event stream"
    *earlier, last = events
    if last.event == "error":
        assert not list(OPENAI_ERROR_SCHEMA.iter_errors(last.data)), last.data
        assert last.data["error"]["type"] != "server_error", f"a server error inside a stream: {last.data}"
        events = earlier
    else:
        assert last.event == "image_generation.completed", f"the stream ended with {last.event}"
    for event in events:
        assert event.event in ("image_generation.partial_image", "image_generation.completed"), event.event
        assert event.data["type"] == event.event and isinstance(event.data["image_index"], int), event.data
        Image.open(io.BytesIO(base64.b64decode(event.data["b64_json"]))).load()
    names = [event.event for event in events]
    if "image_generation.completed" in names:  # the images are finished after every preview
        assert set(names[names.index("image_generation.completed"):]) == {"image_generation.completed"}, names


def _check_stream(path: str, status: int, content: bytes) -> None:
    """A 200 event stream: progress, preview and decoding or delta events, then exactly one final `done` (or a 4xx
    `error`)."""
    if path == "/v1/images/generations":
        _check_openai_image_stream(content)
        return
    if path.startswith("/v1/"):
        _check_openai_stream(content)
        return
    events = list(sse_events(iter(content.decode("utf-8").splitlines())))
    assert events, "an empty event stream"
    *steps, last = events
    assert {event.event for event in steps} <= STREAM_EVENTS[path], [event.event for event in steps]
    if last.event == "done":
        errors = sorted(RESULT_SCHEMAS[path].iter_errors(last.data), key=str)
        assert not errors, f"the done event does not match the response schema: {errors[0].message}"
    else:
        assert last.event == "error", f"the stream ended without done or error: {last.event}"
        assert not list(ERROR_SCHEMA.iter_errors(last.data)), last.data
        assert last.data["error"]["status"] < 500, f"a server error inside a {status} stream: {last.data}"


def fuzz(url: str, method: str, path: str, mode: GenerationMode, examples: int, *, derandomize: bool = True,
         key: str | None = None) -> None:
    operation = SCHEMA[path][method]
    headers = {"Authorization": f"Bearer {key}"} if key else None

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize, print_blob=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(mode), real_pictures=st.booleans())
    def run(case: Any, real_pictures: bool) -> None:
        if real_pictures and mode is GenerationMode.POSITIVE:
            _with_real_pictures(case)
        _without_stream(path, case)
        response = case.call(base_url=url, headers=headers, timeout=120)
        media = (response.headers.get("content-type") or [""])[0]
        streamed = media.startswith("text/event-stream")
        case.validate_response(response, checks=_checks(path, mode, streamed, key is not None), headers=headers)
        if streamed:
            try:
                _check_stream(path, response.status_code, response.content)
            except AssertionError as err:
                raise AssertionError(f"{err}\nReproduce with:\n    {case.as_curl_command(base_url=url)}") from None

    run()


@pytest.fixture(scope="module")
def locked(tiny_dir: Path) -> Iterator[LiveServer]:
    live = start_server(test_settings(tiny_dir, api_key=API_KEY))
    yield live
    live.stop()


CASES = [pytest.param(method, path, GenerationMode.POSITIVE, id=f"{method} {path} positive")
         for method, path in OPERATIONS]
CASES += [pytest.param(method, path, GenerationMode.NEGATIVE, id=f"{method} {path} negative")
          for method, path in WITH_BODY]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_get_documented_answers_and_never_a_server_error(server, method, path, mode):
    fuzz(server.url, method, path, mode, examples=25 if method == "POST" else 10)


@pytest.mark.parametrize(("method", "path"), [pytest.param(m, p, id=f"{m} {p}") for m, p in OPERATIONS])
def test_with_an_api_key_generated_requests_are_served_with_it_and_refused_without(locked, method, path):
    # ignored_auth replays each request without the key and with a wrong one: both must be refused with 401.
    fuzz(locked.url, method, path, GenerationMode.POSITIVE, examples=8, key=API_KEY)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_long_fuzzing_finds_no_server_error_or_undocumented_answer(server, method, path, mode):
    fuzz(server.url, method, path, mode, examples=400 if method == "POST" else 50, derandomize=False)


# What the fuzzing surfaced, pinned down as plain requests.


@pytest.mark.parametrize("temperature", [1e-310, 5e-324])
@pytest.mark.parametrize(("path", "request_body"), [
    pytest.param("/understand", {"question": "What is it?", "images": [b64(PICTURES[0])], "max_new_tokens": 8},
                 id="understand"),
    pytest.param("/generate", {"prompt": "a fox", "format": "png"}, id="generate"),
])
def test_a_vanishingly_small_temperature_samples_like_greedy_decoding(server, path, request_body, temperature):
    with server.client() as http:
        greedy = http.post(path, json={**request_body, "temperature": 0, "seed": 3})
        tiny = http.post(path, json={**request_body, "temperature": temperature, "seed": 3})
    assert greedy.status_code == tiny.status_code == 200, (greedy.text, tiny.text)
    assert essence(path, tiny.json()) == essence(path, greedy.json())
