"""OpenAPI documentation pieces shared by the routes: error responses, stream responses, request bodies."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from service.api.openai.errors import OpenAIErrorResponse, error_type
from service.api.openai.image_protocol import ImageGenerationRequest
from service.api.protocol import (
    MAX_IMAGES,
    Decoding,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Preview,
    Progress,
    TextDelta,
    UnderstandOptions,
    UnderstandRequest,
    UnderstandResponse,
)

REF = "#/components/schemas/{model}"

# status -> (what it means, the error type, an example message): the service's errors, on every route
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Malformed content: invalid JSON or base64, an image that cannot be decoded, a bad multipart form.",
          "bad_request", "image 1 is truncated or corrupt (PNG): image file is truncated"),
    401: ("The server has an API key and the request did not carry it.",
          "unauthorized", "the API key is missing: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"),
    404: ("No such model on this server.", "not_found", "the model 'gpt-4o' does not exist; this server serves "
                                                          "'Janus-Pro-1B'"),
    408: ("The body did not arrive within the server's body-read deadline; the connection is closed.",
          "request_timeout", "the request body did not arrive within 60 s (3 bytes came); send it faster or ask for "
                             "a longer JANUS_BODY_TIMEOUT_S"),
    411: ("A body the server cannot delimit: no Content-Length and no chunked encoding (HTTP/1.0).",
          "length_required", "the request has no Content-Length header (nor chunked Transfer-Encoding), so no body "
                             "was read: send Content-Length with the body (HTTP/1.0 clients must)"),
    413: ("The body, an image file or an image's pixel count is over the server's limit.",
          "payload_too_large", "image 1 is 20000x20000 = 400000000 pixels; the server's limit is 40000000 pixels "
                               "(width x height, JANUS_MAX_IMAGE_PIXELS)"),
    415: ("The body's content type is not one this route reads.",
          "unsupported_media_type", "expected an application/json body, got text/plain"),
    422: ("A field is missing or out of range, or the request cannot fit the server (prompt and images too long "
          "for its context, more rows than it has: the message names the setting to raise).",
          "validation_error", "body.max_new_tokens: Input should be less than or equal to 4096"),
    429: ("Every row is busy and the waiting queue is full, or the wait for free rows would outlast the request's "
          "timeout. Retry after `Retry-After` seconds (an estimate for this kind of request, at most 60).",
          "overloaded", "the server is at capacity (32 rows running, 64 requests waiting); retry later"),
    500: ("The model failed on this request (other requests are unaffected).",
          "model_error", "prefill failed: ..."),
    503: ("The model is still warming up, or the server is shutting down. Retry after `Retry-After` seconds.",
          "not_ready", "the model is warming up; retry shortly"),
    504: ("The request did not finish within the server's per-request timeout.",
          "timeout", "the request did not finish within 600.0 s"),
}
# where /v1 says it otherwise
_OPENAI = {
    400: ("Malformed content (invalid JSON or base64, an image that cannot be decoded) or a field asking for "
          "something the server does not do.", "bad_request", "image 1 is truncated or corrupt (PNG): image file is "
          "truncated"),
    422: ("A field is missing, of the wrong type or out of range (`param` names it as the request spells it), or "
          "the request cannot fit the server's rows or KV memory, or (images) its context; the message names the "
          "setting to raise.", "validation_error", "temperature: must be less than or equal to 2"),
}
# chat completions: a conversation longer than the context is OpenAI's context_length_exceeded
_OPENAI_CHAT = {
    **_OPENAI,
    400: ("Malformed content (invalid JSON or base64, an image that cannot be decoded), a field asking for something "
          "the server does not do, or a conversation longer than the server's context: `code` "
          "`context_length_exceeded`, as OpenAI answers; its message names what to shorten and the setting to raise.",
          "context_length_exceeded", "This model's maximum context length is 4096 tokens, and this request needs "
          "4170: the prompt is 3914 tokens and max_tokens 256 would take it to 4170, but the server's context is "
          "4096 tokens: lower max_tokens to at most 182, shorten the conversation, or raise JANUS_MAX_SEQ_LEN to at "
          "least 4170"),
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a family of routes says its errors: the body's model, its example, and what it says otherwise."""

    model: type[BaseModel]
    example: Callable[[int, str, str], dict[str, Any]]  # (status, error type, message) -> the body's `error`
    says: dict[int, tuple[str, str, str]] = field(default_factory=dict)


def _native_example(status: int, kind: str, message: str) -> dict[str, Any]:
    example: dict[str, Any] = {"type": kind, "message": message, "status": status}
    if kind == "validation_error":
        example["details"] = [{"loc": "body.max_new_tokens", "message": message.split(": ", 1)[1]}]
    return example


def _openai_example(status: int, kind: str, message: str) -> dict[str, Any]:
    param = {"validation_error": "temperature", "context_length_exceeded": "messages"}.get(kind)
    return {"message": message, "type": error_type(status), "param": param, "code": kind}


NATIVE = Dialect(ErrorResponse, _native_example)
OPENAI = Dialect(OpenAIErrorResponse, _openai_example, _OPENAI)
OPENAI_CHAT = Dialect(OpenAIErrorResponse, _openai_example, _OPENAI_CHAT)


def error_responses(*statuses: int, dialect: Dialect = NATIVE,
                    by_reference: bool = False) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route, in its dialect. `by_reference`: the schema as a reference rather
    than as `model`, for routes whose own media type is not JSON (FastAPI documents a `model` in the route's media
    type; errors are JSON everywhere)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, kind, message = {**_ERRORS, **dialect.says}[status]
        entry: dict[str, Any] = {"description": description, "content": {"application/json": {
            "example": {"error": dialect.example(status, kind, message)}}}}
        if by_reference:
            entry["content"]["application/json"]["schema"] = {"$ref": REF.format(model=dialect.model.__name__)}
        else:
            entry["model"] = dialect.model
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


# what an inference route can answer, on either API (the body limits' 408 and 411 included)
INFERENCE_ERRORS = (400, 401, 408, 411, 413, 415, 422, 429, 500, 503, 504)


class EventStreamResponse(StreamingResponse):
    """A Server-Sent Events answer (also the media type the stream operations document)."""

    media_type = "text/event-stream"


def ok_response(description: str, example: dict[str, Any], stream_example: str | None = None) -> dict[str, Any]:
    """200 as JSON (the schema comes from the route's response model); with `stream_example` also as an event
    stream (the OpenAI routes, whose clients are OpenAI's SDKs, document both media types as OpenAI does)."""
    content: dict[str, Any] = {"application/json": {"example": example}}
    if stream_example is not None:
        content["text/event-stream"] = {"schema": {"type": "string"}, "example": stream_example}
    return {"description": description, "content": content}


UNDERSTAND_EVENTS: dict[str, type[BaseModel]] = {"delta": TextDelta, "done": UnderstandResponse,
                                                 "error": ErrorResponse}
GENERATE_EVENTS: dict[str, type[BaseModel]] = {"progress": Progress, "preview": Preview, "decoding": Decoding,
                                                "done": GenerateResponse, "error": ErrorResponse}


def stream_response(description: str, events: dict[str, type[BaseModel]], example: str) -> dict[str, Any]:
    """200 as an event stream: a string to generated clients (read it with an SSE parser); each event's `data` is
    JSON of the named schema, listed in `x-sse-events` (event name -> schema)."""
    kinds = ", ".join(f"`{name}` ({model.__name__})" for name, model in events.items())
    return {"description": description, "content": {"text/event-stream": {
        "schema": {"type": "string", "description": f"Server-Sent Events; `data` of each is JSON: {kinds}."},
        "example": example,
        "x-sse-events": {name: {"$ref": REF.format(model=model.__name__)} for name, model in events.items()}}}}


TIMINGS_EXAMPLE = {"queued_s": 0.002, "prefill_s": 0.081, "decode_s": 1.93, "total_s": 2.013}
UNDERSTAND_EXAMPLE = {
    "id": "req-5c1e9a02-7", "model": "Janus-Pro-1B", "text": "A red fox is sitting in the snow.",
    "finish_reason": "stop", "usage": {"prompt_tokens": 640, "completion_tokens": 10}, "seed": 2718281828,
    "timings": TIMINGS_EXAMPLE,
    "random_weights": False,
}
GENERATE_EXAMPLE = {
    "id": "req-5c1e9a02-9", "model": "Janus-Pro-1B",
    "images": [{"index": 0, "data": "/9j/4AAQSkZJRgABAQAAAQABAAD..."}],
    "format": "jpeg", "media_type": "image/jpeg", "width": 384, "height": 384, "seed": 42,
    "timings": {**TIMINGS_EXAMPLE, "forward_passes": 576}, "random_weights": False,
}


def json_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """`examples`: name -> value, or name -> (summary, value)."""
    def example(value: Any) -> dict[str, Any]:
        return {"summary": value[0], "value": value[1]} if isinstance(value, tuple) else {"value": value}

    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=model.__name__)},
        "examples": {name: example(value) for name, value in examples.items()}}}}


def understand_body() -> dict[str, Any]:
    """JSON only: a body documented in two media types breaks generated clients (openapi-python-client 0.29
    writes code that does not import), so the multipart form is documented on its own path."""
    return {"requestBody": json_body(UnderstandRequest, {
        "one image": {"question": "What is shown in this picture?", "images": ["<base64>"]},
        "two images": ("Two images (a JANUS_MAX_SEQ_LEN below about 1,300 holds only one)",
                       {"question": "<image_placeholder> <image_placeholder> Which of the two is brighter?",
                        "images": ["<base64>", "<base64>"], "max_new_tokens": 64, "stream": True}),
    })}


def understand_upload_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"$ref": REF.format(model="UnderstandForm")},
        "encoding": {"image": {"contentType": "image/*"}},
    }}}}


def generate_body() -> dict[str, Any]:
    return {"requestBody": json_body(GenerateRequest, {
        "defaults": {"prompt": "a red fox in the snow, watercolour"},
        "four seeded PNGs": {"prompt": "a lighthouse at dusk", "parallel_size": 4, "seed": 42, "format": "png"},
    })}


def request_schemas() -> dict[str, Any]:
    """Schemas for the request bodies routes read themselves (FastAPI only sees their Request parameter), and for
    the stream events' payloads."""
    schemas: dict[str, Any] = {}
    # (the events' other payloads are response models, which FastAPI documents itself)
    for model in (UnderstandRequest, GenerateRequest, UnderstandOptions, ImageGenerationRequest, TextDelta, Progress,
                  Preview, Decoding):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    form = copy.deepcopy(schemas.pop(UnderstandOptions.__name__))
    form["title"] = "UnderstandForm"
    form["description"] = ("Multipart form of an understanding request: one `image` file part per image, "
                           "the options as text fields.")
    form["properties"] = {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "maxItems": MAX_IMAGES,
                                    "description": "The image file(s); none for a text-only question."},
                          **form["properties"]}
    schemas["UnderstandForm"] = form
    return schemas
