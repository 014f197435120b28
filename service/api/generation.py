"""From a native generation request to a running engine request: the one path that both `POST /generate` and
`POST /v1/images/generations` take (the OpenAI route turns its body into a `GenerateRequest` first)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from service.api.protocol import MAX_SEED, GenerateRequest
from service.engine.request import RequestHandle
from service.engine.types import GenerateParams
from service.runtime import Runtime


@dataclass(slots=True)
class Submitted:
    handle: RequestHandle
    params: GenerateParams  # what the engine runs: the seed actually used, the prompt's token count


async def submit_generation(runtime: Runtime, body: GenerateRequest, previews: int = 0) -> Submitted:
    """Pick a seed when the request has none, tokenize off the event loop, and queue the request.

    `previews`: partial images to decode while drawing (streamed requests only)."""
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    params = await asyncio.to_thread(body.to_params, runtime.preprocessor, seed, runtime.settings.request_timeout_s)
    params.previews = previews if body.stream else 0
    return Submitted(runtime.engine.submit(params, stream=body.stream), params)
