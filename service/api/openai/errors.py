"""OpenAI's error body for the /v1 routes: `{"error": {"message", "type", "param", "code"}}`.

The status comes from the service's one error table, so a /v1 request fails with the same status as the native
route would, and the `openai` SDK raises its typed exception for it (BadRequestError for 400,
AuthenticationError for 401, UnprocessableEntityError for 422, RateLimitError for 429 with Retry-After,
InternalServerError for 5xx, ...). `code` carries the service's own stable error kind, except where OpenAI has a
code clients act on: a conversation longer than the context is OpenAI's 400 `context_length_exceeded`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.api.errors import ApiError, BadInput, error_body
from service.engine.capacity import CONTEXT_SETTING
from service.processing import DoesNotFit

PREFIX = "/v1/"

# status -> OpenAI's error type
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class UnsupportedParameter(BadInput):
    """An OpenAI request field asking for something this server does not do (tools, a JSON schema, audio, ...)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param)


class InvalidContent(BadInput):
    """Content of a /v1 request that cannot be used (a remote image URL, an undecodable image, ...), at `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}", param)


class ContextLengthExceeded(BadInput):
    """A conversation longer than the server's context, said as OpenAI says it (400, `context_length_exceeded`,
    `param` messages), so that clients recognise it: the `openai` SDK raises BadRequestError, and LiteLLM maps it
    to ContextWindowExceededError (its context-window fallbacks) by the words "This model's maximum context length
    is". The rest of the message is the native one: what to shorten or lower, and the setting to raise."""

    code = "context_length_exceeded"

    def __init__(self, err: DoesNotFit) -> None:
        short = err.shortfall
        super().__init__(f"This model's maximum context length is {short.limit} tokens, and this request needs "
                         f"{short.needed}: {err}", "messages")

    @classmethod
    def check(cls, err: DoesNotFit) -> DoesNotFit | ContextLengthExceeded:
        """The error to raise for a conversation that does not fit: this one when the context is what it exceeds
        (not the rows or the KV memory, which OpenAI has no code for)."""
        return cls(err) if err.shortfall.setting == CONTEXT_SETTING else err


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error(native: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The service's error body (`errors.error_body`) re-shaped as OpenAI's."""
    error = native["error"]
    message = error["message"]
    param = getattr(exc, "param", None) if isinstance(exc, ApiError | DoesNotFit) else None
    details = error.get("details")
    if details and error["type"] == "validation_error":
        # the fields as the request spells them (`messages[0].content`), not the validator's `body.messages.0...`
        named = [(loc_to_param(d["loc"]), d["message"]) for d in details]
        message = "; ".join(f"{where}: {what}" if where else what for where, what in named[:5])
        param = param or named[0][0]
    code = getattr(exc, "code", None) if isinstance(exc, ContextLengthExceeded) else None
    return {"error": {"message": message, "type": error_type(error["status"]), "param": param,
                      "code": code or error["type"]}}


def openai_error_model(exc: BaseException) -> OpenAIErrorResponse:
    """The error body of a /v1 stream's error event."""
    return OpenAIErrorResponse.model_validate(openai_error(error_body(exc), exc))


def loc_to_param(loc: str) -> str | None:
    """`body.messages.0.content` -> `messages[0].content` (the way OpenAI names a field in a request)."""
    parts = loc.split(".")
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, rate_limit_error "
                                  "or server_error.")
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str = Field(description="The service's stable error kind, e.g. validation_error, overloaded; OpenAI's "
                                  "context_length_exceeded for a conversation longer than the context.")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody
