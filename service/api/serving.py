"""The one skeleton of the inference routes: submit the engine request, then stream its events or wait for its
result.

Every route (`/understand`, `/generate`, `/v1/chat/completions`, `/v1/images/generations`) reads and checks its
body, turns it into the engine's parameters and calls `serve` with its `Replies`: what differs from route to route
(the response, each stream event, the error event in the route's dialect). The rest is here, once: the request's id
in `X-Request-Id`, a failure mid-stream sent as one error event (and counted), the request cancelled when the client
leaves (its rows are freed at the next step), and a result awaited while watching for a disconnect.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from service.api.docs import EventStreamResponse
from service.api.errors import classify
from service.api.image_inputs import ImageInput, decode_images
from service.api.protocol import MAX_SEED, GenerateRequest
from service.api.streaming import SSE_HEADERS, result_or_cancel
from service.conversation import Conversation
from service.engine.request import RequestHandle
from service.engine.types import ErrorEvent, Event, GenerateParams, Params, Result, UnderstandParams
from service.processing import AnswerOptions
from service.runtime import Runtime


def seed_or_random(seed: int | None) -> int:
    """The client's seed, or one drawn for it (returned in the answer, so that it can be sent back)."""
    return seed if seed is not None else secrets.randbelow(MAX_SEED + 1)


async def answer_params(runtime: Runtime, conversation: Conversation, images: Sequence[ImageInput],
                        options: AnswerOptions) -> UnderstandParams:
    """An understanding request's parameters: refused before any image is decoded when it cannot fit, its images
    decoded within the server's pixel budget, then preprocessed and the prompt tokenized (CPU work, off the event
    loop)."""
    prep = runtime.preprocessor
    await asyncio.to_thread(prep.check_fits, conversation, options)
    pictures = await decode_images(runtime, images)
    return await asyncio.to_thread(prep.chat, conversation, pictures, options, runtime.settings.request_timeout_s)


async def generation_params(runtime: Runtime, body: GenerateRequest, seed: int, count_field: str = "parallel_size",
                            previews: int = 0) -> GenerateParams:
    """A generation request's parameters, the prompt tokenized off the event loop (a 422 naming the setting to raise
    when it cannot fit); `count_field`: what the client's API calls parallel_size; `previews`: partial images to
    decode while drawing (streamed requests only)."""
    return await asyncio.to_thread(body.to_params, runtime.preprocessor, seed, runtime.settings.request_timeout_s,
                                   count_field, previews if body.stream else 0)


class Replies:
    """How a route answers one engine request: the whole response, or the stream of its events."""

    closing = b""  # sent after the last event, also after an error event (OpenAI's chat: `data: [DONE]`)

    async def response(self, result: Result) -> BaseModel:
        raise NotImplementedError

    def opening(self) -> bytes:
        """Sent before any event (OpenAI's chat: the role)."""
        return b""

    def events(self, event: Event) -> AsyncIterator[bytes]:
        """The stream's bytes for one event of the engine request (never an error)."""
        raise NotImplementedError

    def error(self, error: Exception) -> bytes:
        """The stream's error event, in the route's dialect."""
        raise NotImplementedError


async def serve(request: Request, response: Response, runtime: Runtime, params: Params, stream: bool,
                replies: Callable[[RequestHandle], Replies]) -> Any:
    """Submit `params`; then an event stream, or the route's response once the result is in."""
    handle = runtime.engine.submit(params, stream=stream)
    answer = replies(handle)
    if stream:
        return EventStreamResponse(_stream(runtime, handle, answer), headers={**SSE_HEADERS, "X-Request-Id": handle.id})
    response.headers["X-Request-Id"] = handle.id
    return await answer.response(await result_or_cancel(handle, request))


async def _stream(runtime: Runtime, handle: RequestHandle, answer: Replies) -> AsyncIterator[bytes]:
    try:
        if opening := answer.opening():
            yield opening
        async for event in handle.events():
            if isinstance(event, ErrorEvent):
                runtime.metrics.count_error(classify(event.error)[1])
                yield answer.error(event.error)
                continue
            async for data in answer.events(event):
                yield data
        if answer.closing:
            yield answer.closing
    finally:
        # Reached early only when the client went away mid-stream: free the rows at the next step.
        handle.cancel()
