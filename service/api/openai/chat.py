"""POST /v1/chat/completions: answers to a conversation (with images or without), OpenAI-compatible."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api.auth import Authenticated
from service.api.deps import ReadyRuntimeDep
from service.api.errors import error_body
from service.api.image_inputs import ImageInput, decode_images
from service.api.openai import chat_docs
from service.api.openai.chat_logprobs import ContentLogprobs
from service.api.openai.chat_messages import ChatInput, read_messages
from service.api.openai.chat_protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    CompletionUsage,
    PromptTokensDetails,
)
from service.api.openai.docs import INFERENCE_ERRORS, openai_error_responses
from service.api.openai.errors import ContextLengthExceeded, openai_error
from service.api.openai.validation import read_openai_json
from service.api.protocol import MAX_SEED
from service.api.streaming import SSE_HEADERS, result_or_cancel
from service.engine.request import RequestHandle
from service.engine.types import ErrorEvent, FinishedEvent, TokenEvent, UnderstandParams, UnderstandResult
from service.processing import AnswerOptions, DoesNotFit
from service.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Authenticated])


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every object of one answer shares."""

    id: str
    created: int
    model: str
    fingerprint: str
    logprobs: bool


@router.post("/chat/completions", operation_id="create_chat_completion",
             summary="Answer a conversation (OpenAI-compatible chat completions)", description=chat_docs.DESCRIPTION,
             response_model=ChatCompletion,
             responses={200: chat_docs.OK, **openai_error_responses(*INFERENCE_ERRORS, chat=True)},
             openapi_extra=chat_docs.BODY)
async def create_chat_completion(request: Request, response: Response,
                                 runtime: ReadyRuntimeDep) -> ChatCompletion | StreamingResponse:
    body = await read_openai_json(request, ChatCompletionRequest)
    body.unsupported()
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    try:
        params = await _prepare(runtime, body, seed)
    except DoesNotFit as err:
        raise ContextLengthExceeded.check(err) from None
    handle = runtime.engine.submit(params, stream=bool(body.stream))
    reply = _Reply(completion_id(handle.id), int(time.time()), runtime.info.name, fingerprint(runtime),
                   bool(body.logprobs))
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_stream(runtime, handle, reply, params.n, usage), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, "X-Request-Id": handle.id})
    response.headers["X-Request-Id"] = handle.id
    result = await result_or_cancel(handle, request)
    assert isinstance(result, UnderstandResult)
    return _completion(runtime, reply, result)


async def _prepare(runtime: Runtime, body: ChatCompletionRequest, seed: int) -> UnderstandParams:
    """Check that the conversation fits before any image is decoded, decode its images within the server's pixel
    budget, then build the engine's parameters (CPU work, off the event loop)."""
    options = AnswerOptions(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=0.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, seed=seed, n=body.n or 1, stop=body.stop_texts,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        length_field="max_completion_tokens" if body.max_completion_tokens else "max_tokens", prompt_field="messages")
    prep = runtime.preprocessor

    def read_and_check() -> ChatInput:
        chat = read_messages(body.messages)
        prep.check_fits(chat.conversation, options)
        return chat

    chat = await asyncio.to_thread(read_and_check)
    # A bad image (400) or one over the limits (413) names the part it came in.
    images = await decode_images(runtime, [ImageInput(url, where, f"{where}.image_url.url")
                                           for url, where in chat.images])
    return await asyncio.to_thread(prep.chat, chat.conversation, images, options,
                                   timeout_s=runtime.settings.request_timeout_s)


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


def _completion(runtime: Runtime, reply: _Reply, result: UnderstandResult) -> ChatCompletion:
    prep = runtime.preprocessor
    choices = []
    for index, answer in enumerate(result.answers):
        logprobs = None
        if reply.logprobs:
            tokens = ContentLogprobs(prep)
            for token_id, entry in zip(answer.token_ids, answer.logprobs or [], strict=True):
                tokens.push(token_id, entry)
            logprobs = ChoiceLogprobs(content=tokens.release(answer.text, final=True))
        choices.append(Choice(index=index, message=AssistantMessage(content=answer.text), logprobs=logprobs,
                              finish_reason=answer.finish_reason))  # type: ignore[arg-type]
    return ChatCompletion(id=reply.id, created=reply.created, model=reply.model, system_fingerprint=reply.fingerprint,
                          choices=choices, usage=_usage(result))


def _usage(result: UnderstandResult) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           total_tokens=result.prompt_tokens + result.completion_tokens,
                           prompt_tokens_details=PromptTokensDetails(cached_tokens=result.cached_tokens))


# streaming


async def _stream(runtime: Runtime, handle: RequestHandle, reply: _Reply, n: int,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` events: the role, text pieces as they come (never any part of a stop text), each
    answer's finish reason, with include_usage a last chunk with the usage; then `[DONE]`."""
    sent = [""] * n  # each answer's text sent so far
    tokens = [ContentLogprobs(runtime.preprocessor) for _ in range(n)]  # each token's entry goes with its text

    def chunk(choices: list[dict[str, Any]], usage: CompletionUsage | None = None) -> bytes:
        data: dict[str, Any] = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                                "model": reply.model, "system_fingerprint": reply.fingerprint, "choices": choices}
        if include_usage:
            data["usage"] = usage.model_dump() if usage is not None else None
        return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    def choice(index: int, delta: dict[str, str], logprobs: ChoiceLogprobs | None = None,
               finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs.model_dump() if logprobs else None,
                "finish_reason": finish_reason}

    try:
        yield chunk([choice(i, {"role": "assistant", "content": ""}) for i in range(n)])
        async for event in handle.events():
            if isinstance(event, TokenEvent):
                piece = event.text
                sent[event.index] += piece
                logprobs = None
                if reply.logprobs and event.logprob is not None:
                    tokens[event.index].push(event.token_id, event.logprob)
                    entries = tokens[event.index].release(sent[event.index])
                    logprobs = ChoiceLogprobs(content=entries) if entries else None
                if piece or logprobs is not None:
                    yield chunk([choice(event.index, {"content": piece}, logprobs)])
            elif isinstance(event, FinishedEvent):
                result = event.result
                assert isinstance(result, UnderstandResult)
                for index, answer in enumerate(result.answers):
                    rest = answer.text[len(sent[index]):]
                    entries = tokens[index].release(answer.text, final=True) if reply.logprobs else []
                    logprobs = ChoiceLogprobs(content=entries) if entries else None
                    yield chunk([choice(index, {"content": rest} if rest else {}, logprobs, answer.finish_reason)])
                if include_usage:
                    yield chunk([], _usage(result))
            elif isinstance(event, ErrorEvent):
                body = error_body(event.error)
                runtime.metrics.count_error(body["error"]["type"])
                yield f"data: {json.dumps(openai_error(body, event.error))}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        # Reached early only when the client went away mid-stream: free the rows at the next step.
        handle.cancel()
