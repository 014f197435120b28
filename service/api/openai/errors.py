"""OpenAI's error body for the /v1 routes: `{"error": {"message", "type", "param", "code"}}`.

The status comes from the service's one error table, so a /v1 request fails with the same status as the native
route would, and the `openai` SDK raises its typed exception for it (BadRequestError for 400,
AuthenticationError for 401, UnprocessableEntityError for 422, RateLimitError for 429 with Retry-After,
InternalServerError for 5xx, ...). `code` carries the service's own stable error kind.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.api.errors import ApiError, BadInput
from service.processing import DoesNotFit

PREFIX = "/v1/"

# status -> OpenAI's error type
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class UnsupportedParameter(BadInput):
    """An OpenAI request field asking for something this server does not do (tools, a JSON schema, audio, ...)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class InvalidContent(BadInput):
    """Content of a /v1 request that cannot be used (a remote image URL, an undecodable image, ...), at `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error(native: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The service's error body (`errors.error_body`) re-shaped as OpenAI's."""
    error = native["error"]
    param = getattr(exc, "param", None) if isinstance(exc, ApiError | DoesNotFit) else None
    if param is None and error.get("details"):
        param = loc_to_param(error["details"][0]["loc"])
    return {"error": {"message": error["message"], "type": error_type(error["status"]), "param": param,
                      "code": error["type"]}}


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
    code: str = Field(description="The service's stable error kind, e.g. validation_error, overloaded.")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody
