"""OpenAPI documentation of POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from service.api.docs import json_body
from service.api.openai.chat_protocol import ChatCompletionChunk, ChatCompletionRequest

DESCRIPTION = """\
OpenAI's chat completions: answers the conversation in `messages` (system/developer, user and assistant turns,
the last one the user's). A user message's `content` is a string or a list of parts, `text` and `image_url`
(`data:image/...;base64,` URLs only: the server fetches nothing), with images anywhere among the text and in any
user turn; each image stands in the prompt where it is. Conversations without images work too.

Used: `max_completion_tokens` / `max_tokens`, `temperature` (default 0 = greedy, like `/understand`), `top_p`,
`seed`, `stop` (up to 4 texts; an answer ends before the first and does not contain it), `n` (answers drawn from
one prompt, prefilled once), `stream` with `stream_options.include_usage`, `logprobs` / `top_logprobs` (from the
distribution the token was drawn from: temperature and `top_p` applied; the model's own softmax for greedy
choice). `model` may be any name.

Accepted at their neutral value, else a 400 naming the field: `frequency_penalty` and `presence_penalty` 0,
`logit_bias` {}, `tools` [], `tool_choice` none, `response_format` text, `modalities` ["text"], `store` false,
`verbosity` medium. Refused (400): `audio`, `prediction`, `web_search_options`, `reasoning_effort`, tool and
function messages. Ignored: `user`, `metadata`, `service_tier`, `safety_identifier`, `prompt_cache_key`,
`parallel_tool_calls`, image `detail`, and any field the server does not know (logged once per name).

With `stream: true` the answer is a Server-Sent Events stream of `chat.completion.chunk` objects, then
`data: [DONE]`; an error after the stream started comes as one `data: {"error": ...}` event.
"""

COMPLETION_EXAMPLE = {
    "id": "chatcmpl-req-3f9a1c2e-7", "object": "chat.completion", "created": 1767225600, "model": "Janus-Pro-1B",
    "system_fingerprint": "fp_3f1c2a9b0d4e",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A red fox sitting in the snow."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 640, "completion_tokens": 9, "total_tokens": 649},
}
STREAM_EXAMPLE = (
    'data: {"id":"chatcmpl-req-3f9a1c2e-7","object":"chat.completion.chunk","created":1767225600,'
    '"model":"Janus-Pro-1B","system_fingerprint":"fp_3f1c2a9b0d4e","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-req-3f9a1c2e-7",...,"choices":[{"index":0,"delta":{"content":"A red fox"},'
    '"logprobs":null,"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-req-3f9a1c2e-7",...,"choices":[{"index":0,"delta":{},"logprobs":null,'
    '"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)
OK: dict[str, Any] = {
    "description": "The completion (JSON), or with `stream: true` an event stream of chunks.",
    "content": {"application/json": {"example": COMPLETION_EXAMPLE},
                "text/event-stream": {"schema": {"type": "string"}, "example": STREAM_EXAMPLE}},
}
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA..."
BODY = {"requestBody": json_body(ChatCompletionRequest, {
    "one image": {"model": "janus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": IMAGE}}, {"type": "text", "text": "What is in this picture?"}]}]},
    "text only, streamed": {"model": "janus", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "system", "content": "Answer briefly."},
                                         {"role": "user", "content": "Name three colours of foxes."}]},
    "several turns": {"model": "janus", "max_tokens": 64, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                     {"type": "text", "text": "Describe the picture."}]},
        {"role": "assistant", "content": "A red car on a country road."},
        {"role": "user", "content": "What colour is the sky?"}]},
})}


def request_schemas() -> dict[str, Any]:
    """The request body (the route reads it itself) and the stream's chunk (the document describes a stream as one
    string; clients and tests check each event against this)."""
    schemas: dict[str, Any] = {}
    for model in (ChatCompletionRequest, ChatCompletionChunk):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
