"""POST /understand: answer a question about one or more images."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api import docs
from service.api.auth import Authenticated
from service.api.bodies import UnderstandInput, read_understand
from service.api.deps import ReadyRuntimeDep
from service.api.errors import error_body
from service.api.image_inputs import ImageInput, decode_images
from service.api.protocol import MAX_SEED, RequestTimings, TextDelta, UnderstandResponse, Usage
from service.api.streaming import SSE_HEADERS, result_or_cancel, sse
from service.engine.request import RequestHandle
from service.engine.types import ErrorEvent, FinishedEvent, TokenEvent, UnderstandParams, UnderstandResult
from service.runtime import Runtime

router = APIRouter(tags=["inference"], dependencies=[Authenticated])

DESCRIPTION = """\
Answers `question` about the images, like a chat turn with Janus-Pro.

Send **JSON** (`images`: base64 strings); `POST /understand/upload` takes the same request as a **multipart
form** (one `image` file part per image, the options as text fields), and either path accepts either body. With
one image the question needs no tag; with several, put one `<image_placeholder>` where each image belongs, in order.

`temperature` 0 (the default) is greedy decoding; the same request with the same `seed` gives the same answer,
whatever else the server is doing.

`POST /understand/stream` (and `POST /understand/upload/stream` for the form) takes the same request and answers
with a Server-Sent Events stream: `delta` events (`TextDelta`: `{"id", "text"}`) as the text grows, then one `done`
event carrying the full response (`UnderstandResponse`), or one `error` event carrying the error body
(`ErrorResponse`). `stream: true` here gives the same stream (kept for existing clients; the stream operations are
the ones documented as such).

Every response says `random_weights`: true means the server runs a demo model with random weights.
"""

STREAM_EXAMPLE = (
    'event: delta\ndata: {"id":"req-7","text":"A red"}\n\n'
    'event: delta\ndata: {"id":"req-7","text":" fox."}\n\n'
    'event: done\ndata: {"id":"req-7","model":"Janus-Pro-1B","text":"A red fox.","finish_reason":"stop",...}\n\n'
)


async def understand_image(request: Request, response: Response,
                           runtime: ReadyRuntimeDep) -> UnderstandResponse | StreamingResponse:
    body = await read_understand(request)
    return await _answer(request, response, runtime, body, body.options.stream)


async def understand_image_stream(request: Request, response: Response,
                                  runtime: ReadyRuntimeDep) -> StreamingResponse:
    answer = await _answer(request, response, runtime, await read_understand(request), stream=True)
    assert isinstance(answer, StreamingResponse)
    return answer


async def _answer(request: Request, response: Response, runtime: Runtime, body: UnderstandInput,
                  stream: bool) -> UnderstandResponse | StreamingResponse:
    seed = body.options.seed if body.options.seed is not None else secrets.randbelow(MAX_SEED + 1)
    params = await _prepare(runtime, body, seed)
    handle = runtime.engine.submit(params, stream=stream)
    if stream:
        return docs.EventStreamResponse(_stream(runtime, handle, seed),
                                        headers={**SSE_HEADERS, "X-Request-Id": handle.id})
    response.headers["X-Request-Id"] = handle.id
    result = await result_or_cancel(handle, request)
    assert isinstance(result, UnderstandResult)
    return _response(runtime, handle.id, result, seed)


RESPONSES = {200: docs.ok_response("The answer.", docs.UNDERSTAND_EXAMPLE),
             **docs.error_responses(*docs.INFERENCE_ERRORS)}
STREAM_RESPONSES = {200: docs.stream_response("The answer as it is written, as Server-Sent Events.",
                                              docs.UNDERSTAND_EVENTS, STREAM_EXAMPLE),
                    **docs.error_responses(*docs.INFERENCE_ERRORS, by_reference=True)}
router.add_api_route("/understand", understand_image, methods=["POST"], operation_id="understand_image",
                     summary="Answer a question about images", description=DESCRIPTION,
                     response_model=UnderstandResponse, responses=RESPONSES, openapi_extra=docs.understand_body())
router.add_api_route("/understand/stream", understand_image_stream, methods=["POST"],
                     operation_id="understand_image_stream", summary="Answer a question about images, streamed",
                     description=DESCRIPTION, response_class=docs.EventStreamResponse, response_model=None,
                     responses=STREAM_RESPONSES, openapi_extra=docs.understand_body())
router.add_api_route("/understand/upload", understand_image, methods=["POST"], operation_id="understand_image_upload",
                     summary="Answer a question about uploaded images (multipart form)", description=DESCRIPTION,
                     response_model=UnderstandResponse, responses=RESPONSES,
                     openapi_extra=docs.understand_upload_body())
router.add_api_route("/understand/upload/stream", understand_image_stream, methods=["POST"],
                     operation_id="understand_image_upload_stream",
                     summary="Answer a question about uploaded images (multipart form), streamed",
                     description=DESCRIPTION, response_class=docs.EventStreamResponse, response_model=None,
                     responses=STREAM_RESPONSES, openapi_extra=docs.understand_upload_body())


async def _prepare(runtime: Runtime, body: UnderstandInput, seed: int) -> UnderstandParams:
    """Check that the request fits before any image is decoded, decode its images within the server's pixel
    budget, then preprocess them and tokenize the prompt (CPU work, off the event loop)."""
    options, prep = body.options, runtime.preprocessor
    await asyncio.to_thread(prep.check_question_fits, options.question, len(body.images),
                            system_prompt=options.system_prompt, max_new_tokens=options.max_new_tokens,
                            history=options.turns())
    images = await decode_images(runtime, [ImageInput(raw, f"image {number}")
                                           for number, raw in enumerate(body.images, start=1)])
    return await asyncio.to_thread(options.to_params, prep, images, seed, runtime.settings.request_timeout_s)


def _response(runtime: Runtime, request_id: str, result: UnderstandResult, seed: int) -> UnderstandResponse:
    return UnderstandResponse(
        id=request_id, model=runtime.info.name, text=result.text,
        finish_reason=result.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        seed=seed, timings=RequestTimings.of(result.timings), random_weights=runtime.info.random_weights)


async def _stream(runtime: Runtime, handle: RequestHandle, seed: int) -> AsyncIterator[bytes]:
    sent = 0  # characters of the answer sent
    try:
        async for event in handle.events():
            if isinstance(event, TokenEvent):
                if event.text:
                    sent += len(event.text)
                    yield sse("delta", TextDelta(id=handle.id, text=event.text))
            elif isinstance(event, FinishedEvent):
                assert isinstance(event.result, UnderstandResult)
                if rest := event.result.text[sent:]:
                    yield sse("delta", TextDelta(id=handle.id, text=rest))
                yield sse("done", _response(runtime, handle.id, event.result, seed))
            elif isinstance(event, ErrorEvent):
                body = error_body(event.error)
                runtime.metrics.count_error(body["error"]["type"])
                yield sse("error", body)
    finally:
        # Reached early only when the client went away mid-stream: free the rows at the next step.
        handle.cancel()
