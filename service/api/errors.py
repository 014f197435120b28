"""The one error body and the one table that maps every exception to an HTTP status.

Body: `{"error": {"type": ..., "message": ..., "status": ..., "details": [...]?}}` for every error the service
sends, whether it comes from validation, the image decoder, authentication, the engine or a bug.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.protocol import ErrorResponse
from service.engine.errors import (
    EngineError,
    EngineStopped,
    InvalidRequest,
    ModelFailure,
    Overloaded,
    RequestCancelled,
    RequestTimeout,
)
from service.processing import InputError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of the errors raised by the HTTP layer itself."""

    def __init__(self, message: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault, where the API has one (OpenAI's `param`)


class BadInput(ApiError):
    """Malformed request content: invalid JSON or base64, an undecodable image."""


class PayloadTooLarge(ApiError):
    """A body, an image file or an image's pixel count over its configured limit."""


class LengthRequired(ApiError):
    """A request with a body but no way to know its length (HTTP/1.0 without Content-Length)."""


class BodyTimeout(ApiError):
    """The request body did not arrive within the server's body-read deadline."""


class UnsupportedMediaType(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class NotReady(ApiError):
    """The engine is still warming up, or its loop is not running."""


class ClientDisconnected(ApiError):
    """The client went away before the answer was ready (only ever seen in logs and metrics)."""


# exception class -> (status, error type). Looked up along the exception's MRO, so the most specific entry wins.
ERROR_TABLE: dict[type[BaseException], tuple[int, str]] = {
    BadInput: (400, "bad_request"),
    Unauthorized: (401, "unauthorized"),
    BodyTimeout: (408, "request_timeout"),
    LengthRequired: (411, "length_required"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    RequestValidationError: (422, "validation_error"),
    InputError: (422, "invalid_request"),
    InvalidRequest: (422, "invalid_request"),
    Overloaded: (429, "overloaded"),
    ClientDisconnected: (499, "client_closed_request"),
    ClientDisconnect: (499, "client_closed_request"),  # the client went away while its body was being read
    ModelFailure: (500, "model_error"),
    EngineError: (500, "engine_error"),
    NotReady: (503, "not_ready"),
    EngineStopped: (503, "unavailable"),
    RequestTimeout: (504, "timeout"),
    RequestCancelled: (499, "client_closed_request"),
}
INTERNAL = (500, "internal_error")
# Seconds a client should wait before retrying a 503 (warm-up or shutdown usually ends within that).
UNAVAILABLE_RETRY_S = 5


def classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL


def error_body(exc: BaseException) -> dict[str, Any]:
    status, kind = classify(exc)
    details = None
    if isinstance(exc, RequestValidationError):
        details = [{"loc": ".".join(str(p) for p in e.get("loc", ())), "message": _field_message(e)}
                   for e in exc.errors()]
        message = "; ".join(f"{d['loc']}: {d['message']}" if d["loc"] else d["message"] for d in details[:5])
        if all(e.get("type") == "json_invalid" for e in exc.errors()):
            status, kind = 400, "bad_request"
            message = "the body is not valid JSON: " + message
    elif isinstance(exc, StarletteHTTPException):
        message = str(exc.detail)
    elif status == 500 and not isinstance(exc, EngineError):
        message = "internal server error"  # a bug: the details belong in the log, not the response
    else:
        message = str(exc) or _phrase(status)
    error: dict[str, Any] = {"type": kind, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_model(exc: BaseException) -> ErrorResponse:
    """`error_body` as the model a stream's error event carries."""
    return ErrorResponse.model_validate(error_body(exc))


def _phrase(status: int) -> str:
    if status == 499:  # nginx's code, not in the HTTP registry
        return "the client closed the connection before the answer"
    return HTTPStatus(status).phrase


def _field_message(error: dict[str, Any]) -> str:
    if error.get("type") == "finite_number":  # NaN or Infinity: not "must be <= 2", which it is not either
        return "must be a finite number"
    return str(error.get("msg", ""))


def error_headers(exc: BaseException, status: int) -> dict[str, str]:
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if status == 503:
        return {"Retry-After": str(UNAVAILABLE_RETRY_S)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="janus-serve"'}
    if isinstance(exc, BodyTimeout):
        return {"Connection": "close"}  # the rest of the body may still come: this connection is done
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        return dict(exc.headers)
    return {}


# Re-shapes the service's error body for routes that speak another API's dialect (the /v1 routes: OpenAI's).
ErrorShaper = Callable[[dict[str, Any], BaseException], dict[str, Any]]


def error_response(request: Request | None, exc: BaseException) -> JSONResponse:
    body = error_body(exc)
    status = body["error"]["status"]
    if status >= 500 and not isinstance(exc, EngineError | NotReady):
        log.error("unhandled error: %r", exc, exc_info=exc)
    runtime = getattr(request.app.state, "runtime", None) if request is not None else None
    if runtime is not None:
        runtime.metrics.count_error(body["error"]["type"])
    if request is not None and (shaper := _shaper(request)) is not None:
        body = shaper(body, exc)
    return JSONResponse(body, status_code=status, headers=error_headers(exc, status))


def _shaper(request: Request) -> ErrorShaper | None:
    dialects: Mapping[str, ErrorShaper] = getattr(request.app.state, "error_dialects", {})
    path = request.url.path
    return next((shaper for prefix, shaper in dialects.items() if path.startswith(prefix)), None)


def install(app: FastAPI, dialects: Mapping[str, ErrorShaper] | None = None) -> None:
    """Route every exception the app can raise through `error_response`; paths under a prefix of `dialects` get
    their error bodies re-shaped by its shaper."""
    app.state.error_dialects = dict(dialects or {})

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc)

    for cls in (*ERROR_TABLE, StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handle)
