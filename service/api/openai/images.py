"""POST /v1/images/generations: OpenAI's image generation, drawn through the same path as POST /generate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api import docs
from service.api.auth import Authenticated
from service.api.deps import ReadyRuntimeDep
from service.api.images import encode_images
from service.api.openai.errors import openai_error_model
from service.api.openai.image_protocol import (
    CompletedEvent,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ImageUsage,
    PartialImageEvent,
)
from service.api.openai.validation import read_openai_json
from service.api.serving import Replies, generation_params, seed_or_random, serve
from service.api.streaming import sse
from service.engine.types import Event, FinishedEvent, GenerateParams, GenerateResult, PreviewEvent, Result

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Authenticated])

DESCRIPTION = """\
OpenAI's image generation API (`client.images.generate(...)` in the `openai` SDKs), drawn by the same engine path as
`POST /generate`: `n` images of `size` `auto` or the model's own size (384x384 for Janus-Pro), returned inline as
base64 (`b64_json`) in `output_format` png (default), jpeg or webp (`output_compression` = encoder quality).

Janus-Pro's own options go in the body beside OpenAI's (with the SDK: `extra_body`): `cfg_weight` (1-20, default 5),
`temperature` (0-2, default 1, 0 = greedy) and `seed` (returned in the response; the same seed gives the same images
as `POST /generate`). Fields that ask for something Janus-Pro cannot do (another size, `response_format: url`,
transparency, a quality or style setting) are a 400 naming the field; `moderation`, `user`, `safety_identifier` and
neutral values of the others are accepted without effect, and unknown fields are ignored.

With `stream: true` the answer is a Server-Sent Events stream in OpenAI's shapes: for each of `partial_images` (0-3)
preview points, one `image_generation.partial_image` event per image (the image as drawn so far, rows not yet drawn
grey), then one `image_generation.completed` event per image. `image_index` says which image an event belongs to.
"""

RESPONSE_EXAMPLE = {
    "created": 1767225600, "data": [{"b64_json": "iVBORw0KGgoAAAANSUhEUgAA..."}], "background": "opaque",
    "output_format": "png", "quality": "auto", "size": "384x384",
    "usage": {"input_tokens": 17, "input_tokens_details": {"text_tokens": 17, "image_tokens": 0},
              "output_tokens": 576, "output_tokens_details": {"text_tokens": 0, "image_tokens": 576},
              "total_tokens": 593},
    "safety_identifier": None, "seed": 42,
}
STREAM_EXAMPLE = (
    'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"iVBORw0...",'
    '"background":"opaque","created_at":1767225600,"output_format":"png","quality":"auto","size":"384x384",'
    '"partial_image_index":0,"image_index":0}\n\n'
    'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"iVBORw0...",'
    '"background":"opaque","created_at":1767225600,"output_format":"png","quality":"auto","size":"384x384",'
    '"usage":{"input_tokens":17,...,"total_tokens":593},"safety_identifier":null,"image_index":0,"seed":42}\n\n'
)
BODY_EXAMPLES = {
    "one PNG": {"prompt": "a red fox in the snow, watercolour", "size": "384x384"},
    "two seeded JPEGs, Janus options": {"prompt": "a lighthouse at dusk", "n": 2, "output_format": "jpeg",
                                        "output_compression": 90, "seed": 42, "cfg_weight": 5, "temperature": 1},
    "streamed with previews": {"prompt": "a city street at night", "stream": True, "partial_images": 2},
}


@router.post(
    "/images/generations",
    operation_id="create_image",
    summary="Generate images (OpenAI-compatible)",
    description=DESCRIPTION,
    response_model=ImagesResponse,
    responses={200: docs.ok_response("The images (JSON), or with `stream: true` an event stream.",
                                     RESPONSE_EXAMPLE, STREAM_EXAMPLE),
               **docs.error_responses(*docs.INFERENCE_ERRORS, dialect=docs.OPENAI)},
    openapi_extra={"requestBody": docs.json_body(ImageGenerationRequest, BODY_EXAMPLES)},
)
async def create_image(request: Request, response: Response,
                       runtime: ReadyRuntimeDep) -> ImagesResponse | StreamingResponse:
    body = await read_openai_json(request, ImageGenerationRequest)
    body.check_supported(runtime.info.output_image_size)
    created = int(time.time())
    native = body.to_native()
    params = await generation_params(runtime, native, seed_or_random(native.seed), count_field="n",
                                     previews=body.partial_images or 0)
    return await serve(request, response, runtime, params, native.stream,
                       lambda handle: _Replies(body, params, created))


class _Replies(Replies):
    """The images, or OpenAI's stream events: a partial image per image at each preview point, then a completed
    event per image."""

    def __init__(self, body: ImageGenerationRequest, params: GenerateParams, created: int) -> None:
        self.body, self.encoding, self.created = body, body.encoding, created
        self.usage = ImageUsage.of(len(params.prompt_ids), params.parallel_size * params.image_tokens)
        self.previews_sent = 0

    async def response(self, result: Result) -> ImagesResponse:
        assert isinstance(result, GenerateResult)
        encoded = await asyncio.to_thread(encode_images, result.images, self.encoding.format, self.encoding.quality)
        return ImagesResponse(created=self.created, data=[ImageData(b64_json=data) for data in encoded],
                              output_format=self.encoding.format, size=_size(result.images), usage=self.usage,
                              safety_identifier=self.body.effective_safety_identifier, seed=result.seed)

    async def events(self, event: Event) -> AsyncIterator[bytes]:
        if isinstance(event, PreviewEvent):
            encoded = await asyncio.to_thread(encode_images, event.images, self.encoding.format, self.encoding.quality)
            for index, data in enumerate(encoded):
                yield _event(PartialImageEvent(b64_json=data, created_at=int(time.time()),
                                               output_format=self.encoding.format, size=_size(event.images),
                                               partial_image_index=self.previews_sent, image_index=index))
            self.previews_sent += 1
        elif isinstance(event, FinishedEvent):
            result = event.result
            assert isinstance(result, GenerateResult)
            encoded = await asyncio.to_thread(encode_images, result.images, self.encoding.format, self.encoding.quality)
            for index, data in enumerate(encoded):
                yield _event(CompletedEvent(b64_json=data, created_at=int(time.time()),
                                            output_format=self.encoding.format, size=_size(result.images),
                                            usage=self.usage, image_index=index, seed=result.seed,
                                            safety_identifier=self.body.effective_safety_identifier))

    def error(self, error: Exception) -> bytes:
        return sse("error", openai_error_model(error))


def _event(event: PartialImageEvent | CompletedEvent) -> bytes:
    return sse(event.type, event)


def _size(images: np.ndarray) -> str:
    _, height, width, _ = images.shape
    return f"{width}x{height}"
