"""Waiting on the engine from a request: Server-Sent Events framing, and cancelling when the client leaves."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from service.api.errors import ClientDisconnected
from service.api.middleware import ENGINE_REQUEST_ID
from service.engine.request import RequestHandle
from service.engine.types import Result

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse(event: str | None, data: BaseModel, **dump: Any) -> bytes:
    """One event: its name (none: a `data:`-only event, as OpenAI's chat chunks are) and the model's JSON (`dump`:
    options of `model_dump_json`)."""
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {data.model_dump_json(**dump)}\n\n".encode()


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect (uvicorn sends nothing else).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def result_or_cancel(handle: RequestHandle, request: Request) -> Result:
    """The request's result; if the client disconnects first, cancel it so its rows are freed. An error answer
    from here on (a timeout, a model failure) carries the engine request's id in `X-Request-Id`."""
    setattr(request.state, ENGINE_REQUEST_ID, handle.id)
    result = asyncio.ensure_future(handle.result())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()
        raise ClientDisconnected(f"the client disconnected; request {handle.id} was cancelled")
    finally:
        gone.cancel()
        if not result.done():
            handle.cancel()
            result.cancel()
