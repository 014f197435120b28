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


async def submit_generation(runtime: Runtime, body: GenerateRequest, previews: int = 0,
                            count_field: str = "parallel_size") -> Submitted:
    """Pick a seed when the request has none, tokenize off the event loop, check that the request fits the server
    (a 422 naming the setting to raise when not), and queue the request.

    `previews`: partial images to decode while drawing (streamed requests only). `count_field`: what the client's
    API calls parallel_size, for the refusal."""
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    params = await asyncio.to_thread(body.to_params, runtime.preprocessor, seed, runtime.settings.request_timeout_s,
                                     count_field, previews if body.stream else 0)
    return Submitted(runtime.engine.submit(params, stream=body.stream), params)
