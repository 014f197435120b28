"""OpenAPI documentation of the /v1 routes' errors (OpenAI's body shape, the service's statuses)."""

from __future__ import annotations

from typing import Any

from service.api.docs import _ERRORS, _RETRY_AFTER
from service.api.openai.errors import OpenAIErrorResponse, error_type

_EXTRA = {404: ("No such model on this server.", "not_found", "the model 'gpt-4o' does not exist; this server "
                                                                "serves 'Janus-Pro-1B'")}
# where /v1 differs from the native routes
_V1 = {
    400: ("Malformed content (invalid JSON or base64, an image that cannot be decoded) or a field asking for "
          "something the server does not do.", "bad_request", "image 1 is truncated or corrupt (PNG): image file is "
          "truncated"),
    422: ("A field is missing, of the wrong type or out of range (`param` names it as the request spells it), or "
          "the request cannot fit the server's rows or KV memory, or (images) its context; the message names the "
          "setting to raise.", "validation_error", "temperature: must be less than or equal to 2"),
}
# chat completions: a conversation longer than the context is OpenAI's context_length_exceeded
_CHAT = {
    400: ("Malformed content (invalid JSON or base64, an image that cannot be decoded), a field asking for something "
          "the server does not do, or a conversation longer than the server's context: `code` "
          "`context_length_exceeded`, as OpenAI answers; its message names what to shorten and the setting to raise.",
          "context_length_exceeded", "This model's maximum context length is 4096 tokens, and this request needs "
          "4170: the prompt is 3914 tokens and max_tokens 256 would take it to 4170, but the server's context is "
          "4096 tokens: lower max_tokens to at most 182, shorten the conversation, or raise JANUS_MAX_SEQ_LEN to at "
          "least 4170"),
}


def openai_error_responses(*statuses: int, chat: bool = False) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, kind, message = {**_ERRORS, **_EXTRA, **_V1, **(_CHAT if chat else {})}[status]
        param = {"validation_error": "temperature", "context_length_exceeded": "messages"}.get(kind)
        example = {"message": message, "type": error_type(status), "param": param, "code": kind}
        entry: dict[str, Any] = {"model": OpenAIErrorResponse, "description": description,
                                 "content": {"application/json": {"example": {"error": example}}}}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


INFERENCE_ERRORS = (400, 401, 413, 415, 422, 429, 500, 503, 504)
