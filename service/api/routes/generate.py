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
from service.api.errors import error_model
from service.api.images import MEDIA_TYPES, encode_images
from service.api.protocol import (
    DEFAULT_JPEG_QUALITY,
    Decoding,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    GenerateTimings,
    Preview,
    Progress,
)
from service.api.serving import Replies, generation_params, seed_or_random, serve
from service.api.streaming import sse
from service.engine.types import Event, FinishedEvent, GenerateResult, PreviewEvent, ProgressEvent, Result
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
    'event: progress\ndata: {"id":"req-5c1e9a02-9","steps_done":16,"steps_total":576}\n\n'
    'event: progress\ndata: {"id":"req-5c1e9a02-9","steps_done":32,"steps_total":576}\n\n'
    'event: preview\ndata: {"id":"req-5c1e9a02-9","steps_done":288,"steps_total":576,"format":"jpeg",'
    '"media_type":"image/jpeg","images":[{"index":0,"data":"/9j/4AAQ..."}]}\n\n'
    '...\n\n'
    'event: progress\ndata: {"id":"req-5c1e9a02-9","steps_done":576,"steps_total":576}\n\n'
    'event: decoding\ndata: {"id":"req-5c1e9a02-9","images":1}\n\n'
    'event: done\ndata: {"id":"req-5c1e9a02-9","model":"Janus-Pro-1B",'
    '"images":[{"index":0,"data":"/9j/4AAQ..."}],...}\n\n'
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
    return await _draw(request, response, runtime, body)


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
async def generate_images_stream(request: Request, response: Response, runtime: ReadyRuntimeDep) -> StreamingResponse:
    body = (await read_json(request, GenerateRequest)).model_copy(update={"stream": True})
    return await _draw(request, response, runtime, body)


async def _draw(request: Request, response: Response, runtime: Runtime,
                body: GenerateRequest) -> GenerateResponse | StreamingResponse:
    params = await generation_params(runtime, body, seed_or_random(body.seed), previews=body.previews)
    return await serve(request, response, runtime, params, body.stream,
                       lambda handle: _Replies(runtime, handle.id, body))


class _Replies(Replies):
    def __init__(self, runtime: Runtime, request_id: str, body: GenerateRequest) -> None:
        self.runtime, self.id, self.body = runtime, request_id, body
        self.quality = DEFAULT_JPEG_QUALITY if body.jpeg_quality is None else body.jpeg_quality

    async def response(self, result: Result) -> GenerateResponse:
        assert isinstance(result, GenerateResult)
        encoded = await asyncio.to_thread(encode_images, result.images, self.body.format, self.quality)
        _, height, width, _ = result.images.shape
        return GenerateResponse(
            id=self.id, model=self.runtime.info.name,
            images=[GeneratedImage(index=i, data=data) for i, data in enumerate(encoded)], format=self.body.format,
            media_type=MEDIA_TYPES[self.body.format], width=width, height=height, seed=result.seed,
            timings=GenerateTimings.of(result.timings), random_weights=self.runtime.info.random_weights)

    async def events(self, event: Event) -> AsyncIterator[bytes]:
        if isinstance(event, ProgressEvent):
            yield sse("progress", Progress(id=self.id, steps_done=event.steps_done, steps_total=event.steps_total))
            if event.steps_done == event.steps_total:  # the last step: the images go to the decoder now
                yield sse("decoding", Decoding(id=self.id, images=self.body.parallel_size))
        elif isinstance(event, PreviewEvent):
            # the encoding of /v1's partial images, in the request's own format
            encoded = await asyncio.to_thread(encode_images, event.images, self.body.format, self.quality)
            yield sse("preview", Preview(id=self.id, steps_done=event.steps_done, steps_total=event.steps_total,
                                         format=self.body.format, media_type=MEDIA_TYPES[self.body.format],
                                         images=[GeneratedImage(index=i, data=data) for i, data in enumerate(encoded)]))
        elif isinstance(event, FinishedEvent):
            yield sse("done", await self.response(event.result))

    def error(self, error: Exception) -> bytes:
        return sse("error", error_model(error), exclude_none=True)
