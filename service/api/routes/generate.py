"""POST /generate: images from a text prompt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api import docs
from service.api.auth import Authenticated
from service.api.bodies import read_json
from service.api.deps import ReadyRuntimeDep
from service.api.errors import error_body
from service.api.generation import submit_generation
from service.api.images import MEDIA_TYPES, encode_images
from service.api.protocol import (
    DEFAULT_JPEG_QUALITY,
    Decoding,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Preview,
    Progress,
    RequestTimings,
)
from service.api.streaming import SSE_HEADERS, result_or_cancel, sse
from service.engine.request import RequestHandle
from service.engine.types import ErrorEvent, FinishedEvent, GenerateResult, PreviewEvent, ProgressEvent
from service.runtime import Runtime

router = APIRouter(tags=["inference"], dependencies=[Authenticated])

DESCRIPTION = """\
Draws `parallel_size` images for `prompt` with classifier-free guidance (`cfg_weight`; 1 turns guidance off and
halves the work).

The images come back base64-encoded as JPEG (default, `jpeg_quality`) or PNG, with the `seed` used: send it back to
get the same images, whatever else the server is doing. `temperature` 0 is greedy.

`POST /generate/stream` takes the same request and answers with a Server-Sent Events stream: `progress` events
(`Progress`: `{"id", "steps_done", "steps_total"}`; a step produces one image token of every image), one `decoding`
event after the last step (`Decoding`: `{"id", "images"}`; the image tokens are all drawn and the images are being
decoded, which takes a while on a CPU), then one `done` event carrying the full response (`GenerateResponse`), or
one `error` event carrying the error body (`ErrorResponse`). With `previews` (1-3) it also sends up to that many
`preview` events while drawing (`Preview`: `{"id", "steps_done", "steps_total", "format", "media_type", "images"}`,
every image as drawn so far with the positions not yet drawn grey, base64 in the request's `format`). `stream: true`
here gives the same stream (kept for existing clients; the stream operation is the one documented as such).

Every response says `random_weights`: true means the server runs a demo model with random weights.
"""

STREAM_EXAMPLE = (
    'event: progress\ndata: {"id":"req-9","steps_done":16,"steps_total":576}\n\n'
    'event: progress\ndata: {"id":"req-9","steps_done":32,"steps_total":576}\n\n'
    'event: preview\ndata: {"id":"req-9","steps_done":288,"steps_total":576,"format":"jpeg",'
    '"media_type":"image/jpeg","images":[{"index":0,"data":"/9j/4AAQ..."}]}\n\n'
    '...\n\n'
    'event: progress\ndata: {"id":"req-9","steps_done":576,"steps_total":576}\n\n'
    'event: decoding\ndata: {"id":"req-9","images":1}\n\n'
    'event: done\ndata: {"id":"req-9","model":"Janus-Pro-1B","images":[{"index":0,"data":"/9j/4AAQ..."}],...}\n\n'
)


@router.post(
    "/generate",
    operation_id="generate_images",
    summary="Generate images from a prompt",
    description=DESCRIPTION,
    response_model=GenerateResponse,
    responses={200: docs.ok_response("The images.", docs.GENERATE_EXAMPLE),
               **docs.error_responses(*docs.INFERENCE_ERRORS)},
    openapi_extra=docs.generate_body(),
)
async def generate_images(request: Request, response: Response,
                          runtime: ReadyRuntimeDep) -> GenerateResponse | StreamingResponse:
    body = await read_json(request, GenerateRequest)
    handle = (await submit_generation(runtime, body, previews=body.previews)).handle
    if body.stream:
        return docs.EventStreamResponse(_stream(runtime, handle, body),
                                        headers={**SSE_HEADERS, "X-Request-Id": handle.id})
    response.headers["X-Request-Id"] = handle.id
    result = await result_or_cancel(handle, request)
    assert isinstance(result, GenerateResult)
    return await _response(runtime, handle.id, result, body)


@router.post(
    "/generate/stream",
    operation_id="generate_images_stream",
    summary="Generate images from a prompt, streamed",
    description=DESCRIPTION,
    response_class=docs.EventStreamResponse,
    response_model=None,
    responses={200: docs.stream_response("Progress as the images are drawn, then the images, as Server-Sent Events.",
                                         docs.GENERATE_EVENTS, STREAM_EXAMPLE),
               **docs.error_responses(*docs.INFERENCE_ERRORS, by_reference=True)},
    openapi_extra=docs.generate_body(),
)
async def generate_images_stream(request: Request, runtime: ReadyRuntimeDep) -> StreamingResponse:
    body = (await read_json(request, GenerateRequest)).model_copy(update={"stream": True})
    handle = (await submit_generation(runtime, body, previews=body.previews)).handle
    return docs.EventStreamResponse(_stream(runtime, handle, body), headers={**SSE_HEADERS, "X-Request-Id": handle.id})


def _quality(body: GenerateRequest) -> int:
    return DEFAULT_JPEG_QUALITY if body.jpeg_quality is None else body.jpeg_quality


async def _response(runtime: Runtime, request_id: str, result: GenerateResult,
                    body: GenerateRequest) -> GenerateResponse:
    encoded = await asyncio.to_thread(encode_images, result.images, body.format, _quality(body))
    _, height, width, _ = result.images.shape
    return GenerateResponse(
        id=request_id, model=runtime.info.name,
        images=[GeneratedImage(index=i, data=data) for i, data in enumerate(encoded)],
        format=body.format, media_type=MEDIA_TYPES[body.format], width=width, height=height, seed=result.seed,
        timings=RequestTimings.of(result.timings), random_weights=runtime.info.random_weights)


async def _preview(request_id: str, event: PreviewEvent, body: GenerateRequest) -> Preview:
    # the encoding of /v1's partial images, in the request's own format
    encoded = await asyncio.to_thread(encode_images, event.images, body.format, _quality(body))
    return Preview(id=request_id, steps_done=event.steps_done, steps_total=event.steps_total, format=body.format,
                   media_type=MEDIA_TYPES[body.format],
                   images=[GeneratedImage(index=i, data=data) for i, data in enumerate(encoded)])


async def _stream(runtime: Runtime, handle: RequestHandle, body: GenerateRequest) -> AsyncIterator[bytes]:
    try:
        async for event in handle.events():
            if isinstance(event, ProgressEvent):
                yield sse("progress", Progress(id=handle.id, steps_done=event.steps_done,
                                               steps_total=event.steps_total))
                if event.steps_done == event.steps_total:  # the last step: the images go to the decoder now
                    yield sse("decoding", Decoding(id=handle.id, images=body.parallel_size))
            elif isinstance(event, PreviewEvent):
                yield sse("preview", await _preview(handle.id, event, body))
            elif isinstance(event, FinishedEvent):
                assert isinstance(event.result, GenerateResult)
                yield sse("done", await _response(runtime, handle.id, event.result, body))
            elif isinstance(event, ErrorEvent):
                error = error_body(event.error)
                runtime.metrics.count_error(error["error"]["type"])
                yield sse("error", error)
    finally:
        # Reached early only when the client went away mid-stream: free the rows at the next step.
        handle.cancel()
