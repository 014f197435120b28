"""POST /understand: answer a question about one or more images."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api import docs
from service.api.auth import Authenticated
from service.api.bodies import UnderstandInput, read_understand
from service.api.deps import ReadyRuntimeDep
from service.api.errors import error_model
from service.api.image_inputs import ImageInput
from service.api.protocol import RequestTimings, TextDelta, UnderstandResponse, Usage
from service.api.serving import Replies, answer_params, seed_or_random, serve
from service.api.streaming import sse
from service.engine.types import Event, FinishedEvent, Result, TokenEvent, UnderstandResult
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
    'event: delta\ndata: {"id":"req-5c1e9a02-7","text":"A red"}\n\n'
    'event: delta\ndata: {"id":"req-5c1e9a02-7","text":" fox."}\n\n'
    'event: done\ndata: {"id":"req-5c1e9a02-7","model":"Janus-Pro-1B","text":"A red fox.",'
    '"finish_reason":"stop",...}\n\n'
)


async def understand_image(request: Request, response: Response,
                           runtime: ReadyRuntimeDep) -> UnderstandResponse | StreamingResponse:
    body = await read_understand(request)
    return await _answer(request, response, runtime, body, body.options.stream)


async def understand_image_stream(request: Request, response: Response,
                                  runtime: ReadyRuntimeDep) -> StreamingResponse:
    return await _answer(request, response, runtime, await read_understand(request), stream=True)


async def _answer(request: Request, response: Response, runtime: Runtime, body: UnderstandInput,
                  stream: bool) -> UnderstandResponse | StreamingResponse:
    options, seed = body.options, seed_or_random(body.options.seed)
    images = [ImageInput(raw, f"image {number}") for number, raw in enumerate(body.images, start=1)]
    params = await answer_params(runtime, options.conversation(len(images)), images, options.answer_options(seed))
    return await serve(request, response, runtime, params, stream, lambda handle: _Replies(runtime, handle.id, seed))


class _Replies(Replies):
    def __init__(self, runtime: Runtime, request_id: str, seed: int) -> None:
        self.runtime, self.id, self.seed = runtime, request_id, seed
        self.sent = 0  # characters of the answer sent

    async def response(self, result: Result) -> UnderstandResponse:
        assert isinstance(result, UnderstandResult)
        info = self.runtime.info
        return UnderstandResponse(
            id=self.id, model=info.name, text=result.text, finish_reason=result.finish_reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
            seed=self.seed, timings=RequestTimings.of(result.timings), random_weights=info.random_weights)

    async def events(self, event: Event) -> AsyncIterator[bytes]:
        if isinstance(event, TokenEvent) and event.text:
            self.sent += len(event.text)
            yield sse("delta", TextDelta(id=self.id, text=event.text))
        elif isinstance(event, FinishedEvent):
            assert isinstance(event.result, UnderstandResult)
            if rest := event.result.text[self.sent:]:
                yield sse("delta", TextDelta(id=self.id, text=rest))
            yield sse("done", await self.response(event.result))

    def error(self, error: Exception) -> bytes:
        return sse("error", error_model(error), exclude_none=True)


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
