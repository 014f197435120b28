"""POST /v1/chat/completions: answers to a conversation (with images or without), OpenAI-compatible."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import AsyncIterator
from importlib import metadata

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api import docs
from service.api.auth import Authenticated
from service.api.deps import ReadyRuntimeDep
from service.api.image_inputs import ImageInput
from service.api.openai import chat_docs
from service.api.openai.chat_logprobs import ContentLogprobs
from service.api.openai.chat_messages import read_messages
from service.api.openai.chat_protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    Delta,
    PromptTokensDetails,
)
from service.api.openai.errors import ContextLengthExceeded, openai_error_model
from service.api.openai.validation import read_openai_json
from service.api.serving import Replies, answer_params, seed_or_random, serve
from service.api.streaming import sse
from service.engine.types import Event, FinishedEvent, Result, TokenEvent, UnderstandResult
from service.processing import AnswerOptions, DoesNotFit
from service.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Authenticated])


@router.post("/chat/completions", operation_id="create_chat_completion",
             summary="Answer a conversation (OpenAI-compatible chat completions)", description=chat_docs.DESCRIPTION,
             response_model=ChatCompletion,
             responses={200: chat_docs.OK, **docs.error_responses(*docs.INFERENCE_ERRORS, dialect=docs.OPENAI_CHAT)},
             openapi_extra=chat_docs.BODY)
async def create_chat_completion(request: Request, response: Response,
                                 runtime: ReadyRuntimeDep) -> ChatCompletion | StreamingResponse:
    body = await read_openai_json(request, ChatCompletionRequest)
    body.unsupported()
    options = AnswerOptions(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=0.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, seed=seed_or_random(body.seed), n=body.n or 1,
        stop=body.stop_texts, logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        length_field="max_completion_tokens" if body.max_completion_tokens else "max_tokens", prompt_field="messages")
    chat = read_messages(body.messages)
    # A bad image (400) or one over the limits (413) names the part it came in.
    images = [ImageInput(url, where, f"{where}.image_url.url") for url, where in chat.images]
    try:
        params = await answer_params(runtime, chat.conversation, images, options)
    except DoesNotFit as err:
        raise ContextLengthExceeded.check(err) from None
    return await serve(request, response, runtime, params, bool(body.stream),
                       lambda handle: _Replies(runtime, handle.id, body, options.n))


def completion_id(request_id: str) -> str:
    """The engine request's id (`X-Request-Id`, and what the server logs name the request by): never repeated,
    also across restarts (a random tag per server process), so an id a client stores names one answer."""
    return f"chatcmpl-{request_id}"


@functools.cache
def _package_version() -> str:
    """Read once: the installed metadata does not change while the server runs."""
    try:
        return metadata.version("janus-serve")
    except metadata.PackageNotFoundError:
        return "dev"


def fingerprint(runtime: Runtime) -> str:
    """Names the serving configuration: the same fingerprint and seed give the same answer."""
    info = runtime.info
    key = f"{_package_version()}|{info.name}|{info.dtype}|{info.device}|{runtime.preprocessor.template.name}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class _Replies(Replies):
    """A completion, or its `chat.completion.chunk` events: the role, text pieces as they come (never any part of a
    stop text), each answer's finish reason, with include_usage a last chunk with the usage; then `[DONE]`."""

    closing = b"data: [DONE]\n\n"

    def __init__(self, runtime: Runtime, request_id: str, body: ChatCompletionRequest, n: int) -> None:
        self.prep = runtime.preprocessor
        self.id, self.created, self.model = completion_id(request_id), int(time.time()), runtime.info.name
        self.fingerprint, self.logprobs = fingerprint(runtime), bool(body.logprobs)
        self.include_usage = body.stream_options is not None and body.stream_options.include_usage
        self.sent = [""] * n  # each answer's text sent so far
        self.tokens = [ContentLogprobs(self.prep) for _ in range(n)]  # each token's entry goes with its text

    async def response(self, result: Result) -> ChatCompletion:
        assert isinstance(result, UnderstandResult)
        choices = []
        for index, answer in enumerate(result.answers):
            logprobs = None
            if self.logprobs:
                tokens = ContentLogprobs(self.prep)
                for token_id, entry in zip(answer.token_ids, answer.logprobs or [], strict=True):
                    tokens.push(token_id, entry)
                logprobs = ChoiceLogprobs(content=tokens.release(answer.text, final=True))
            choices.append(Choice(index=index, message=AssistantMessage(content=answer.text), logprobs=logprobs,
                                  finish_reason=answer.finish_reason))  # type: ignore[arg-type]
        return ChatCompletion(id=self.id, created=self.created, model=self.model, system_fingerprint=self.fingerprint,
                              choices=choices, usage=_usage(result))

    def opening(self) -> bytes:
        return self._chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
                            for i in range(len(self.sent))])

    async def events(self, event: Event) -> AsyncIterator[bytes]:
        if isinstance(event, TokenEvent):
            self.sent[event.index] += event.text
            logprobs = None
            if self.logprobs and event.logprob is not None:
                self.tokens[event.index].push(event.token_id, event.logprob)
                entries = self.tokens[event.index].release(self.sent[event.index])
                logprobs = ChoiceLogprobs(content=entries) if entries else None
            if event.text or logprobs is not None:
                yield self._chunk([ChunkChoice(index=event.index, delta=Delta(content=event.text),
                                               logprobs=logprobs)])
        elif isinstance(event, FinishedEvent):
            result = event.result
            assert isinstance(result, UnderstandResult)
            for index, answer in enumerate(result.answers):
                rest = answer.text[len(self.sent[index]):]
                entries = self.tokens[index].release(answer.text, final=True) if self.logprobs else []
                yield self._chunk([ChunkChoice(index=index, delta=Delta(content=rest or None),
                                               logprobs=ChoiceLogprobs(content=entries) if entries else None,
                                               finish_reason=answer.finish_reason)])  # type: ignore[arg-type]
            if self.include_usage:
                yield self._chunk([], _usage(result))

    def error(self, error: Exception) -> bytes:
        return sse(None, openai_error_model(error))

    def _chunk(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> bytes:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    system_fingerprint=self.fingerprint, choices=choices, usage=usage)
        # `usage` is there (null until the last chunk) only when the client asked for it
        return sse(None, chunk, exclude=None if self.include_usage else {"usage"})


def _usage(result: UnderstandResult) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           total_tokens=result.prompt_tokens + result.completion_tokens,
                           prompt_tokens_details=PromptTokensDetails(cached_tokens=result.cached_tokens))
