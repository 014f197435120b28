"""ASGI middleware: the request body limits (size and read deadline), per-request latency metrics plus the
random-weights header, the request-id header, and the last-resort catch of bugs."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import BodyTimeout, PayloadTooLarge, error_response
from service.engine.request import new_request_id
from service.metrics import Metrics

RANDOM_WEIGHTS_HEADER = "x-random-weights"
MODEL_DESCRIPTION_HEADER = "x-model-description"
REQUEST_ID_HEADER = b"x-request-id"
# Where a route notes the engine request serving this HTTP request (`request.state`, i.e. the scope's "state").
ENGINE_REQUEST_ID = "engine_request_id"


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: at once when Content-Length says so, else as soon as the count passes it.
    408 for a body not complete `timeout_s` after the request started (a client announcing 100 kB and sending
    3 bytes would otherwise hold its connection for ever).

    A chunked body over the limit, or a late one, makes `receive()` raise inside the route, which reads its body
    itself and so lets the error reach the error table. Once the body is complete, `receive()` is not timed: a
    streaming answer waits on it for the client's disconnect.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(f"the body is {int(declared)} bytes; the limit is {self.max_bytes}")
            await error_response(Request(scope), error)(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal seen, complete
            if complete or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s "
                                      f"({seen} bytes came); send it faster or ask for a longer "
                                      "JANUS_BODY_TIMEOUT_S") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the body is over the {self.max_bytes} byte limit")
            return message

        await self.app(scope, limited, send)


class ObserveMiddleware:
    """Latency by route and status (a stream counts until its last byte), and on everything `X-Random-Weights` and,
    for a model whose name does not say what it is (the demo model), `X-Model-Description`.

    A response that started but never sent its last body message (`more_body` false) was cut short: by the client
    going away (the server stops writing and the app returns, or its write fails) it counts as 499, as a client
    leaving before the answer does; by the app failing mid-response, as 500.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None, random_weights: bool, description: str = "") -> None:
        self.app = app
        self.metrics = metrics
        self.headers = [(RANDOM_WEIGHTS_HEADER.encode(), b"true" if random_weights else b"false")]
        if description:
            self.headers.append((MODEL_DESCRIPTION_HEADER.encode(), description.encode("ascii", "replace")))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before starting a response, the server sends a 500
        response_started = response_complete = False
        failure: BaseException | None = None

        async def observed(message: Message) -> None:
            nonlocal status, response_started, response_complete
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), *self.headers]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception as exc:
            failure = exc
            raise
        finally:
            if response_started and not response_complete:
                status = 499 if failure is None or _client_went_away(failure) else 500
            if self.metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                self.metrics.observe_request(path, status, time.perf_counter() - started)


def _client_went_away(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a write to a closed connection: ASGI servers of spec 2.4 raise
    OSError there, which Starlette turns into ClientDisconnect and wraps once more when a handler cannot answer."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError | ClientDisconnect):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RequestIdMiddleware:
    """`X-Request-Id` on every response, errors included. A route that made an engine request sets the header to
    that request's id on its answers (the `id` of their bodies and stream events) and notes it in the request's
    state, so that an error answered after the engine took the request carries the same id; any other response
    gets an id made for the HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # the dict `request.state` writes to, shared with the route

        async def identified(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
                    request_id = state.get(ENGINE_REQUEST_ID) or new_request_id()
                    message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        await self.app(scope, receive, identified)


class UnhandledErrorMiddleware:
    """Turns an exception no handler took (a bug) into the error table's 500, here rather than in Starlette's
    outermost layer, which answers but then re-raises and so makes the server drop the keep-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise  # too late for an error body: let the server end the response
            await error_response(Request(scope, receive), exc)(scope, receive, send)
