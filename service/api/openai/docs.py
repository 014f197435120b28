"""OpenAPI documentation of the /v1 routes' errors (OpenAI's body shape, the service's statuses)."""

from __future__ import annotations

from typing import Any

from service.api.docs import _ERRORS, _RETRY_AFTER
from service.api.openai.errors import OpenAIErrorResponse, error_type, loc_to_param

_EXTRA = {404: ("No such model on this server.", "not_found", "the model 'gpt-4o' does not exist; this server "
                                                                "serves 'Janus-Pro-1B'")}


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, kind, message = {**_ERRORS, **_EXTRA}[status]
        param = None
        if kind == "validation_error":
            loc, message = "body.temperature", "body.temperature: Input should be less than or equal to 2"
            param = loc_to_param(loc)
        example = {"message": message, "type": error_type(status), "param": param, "code": kind}
        entry: dict[str, Any] = {"model": OpenAIErrorResponse, "description": description,
                                 "content": {"application/json": {"example": {"error": example}}}}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


INFERENCE_ERRORS = (400, 401, 413, 415, 422, 429, 500, 503, 504)
