"""The FastAPI app: routers, the error table, middleware, and the engine's lifecycle in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from service.api import docs, errors
from service.api.images import allow_pixels
from service.api.middleware import (
    BodyLimitMiddleware,
    ObserveMiddleware,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
)
from service.api.openai import chat as openai_chat
from service.api.openai import chat_docs as openai_chat_docs
from service.api.openai import errors as openai_errors
from service.api.openai import images as openai_images
from service.api.openai import models as openai_models
from service.api.routes import generate, health, info, metrics, playground, understand
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

TITLE = "janus-serve"
VERSION = "0.1.0"
DESCRIPTION = """\
HTTP inference for DeepSeek's Janus-Pro: image understanding (images + question -> text) and text-to-image
generation, continuously batched on one model.

The routes under `/v1` speak the OpenAI API (the official `openai` SDKs and OpenAI-compatible tools work against
them): they accept request fields they do not know (ignored, logged once) and answer errors in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`. Every other error has the same body:
`{"error": {"type", "message", "status", "details"?}}`. Both use the same statuses; 429 and 503 carry
`Retry-After`. When the server has an API key, send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`
(not needed for /health and /ready). Every response has an `X-Random-Weights` header, and JSON bodies a
`random_weights` field: true means a test model with random weights. A model whose name does not say what it
is (the built-in demo model, trained on synthetic shapes) says it in an `X-Model-Description` header and in
`GET /info`. Every response, errors included, has an
`X-Request-Id` header: the engine request's id (`req-<process>-<n>`, the `id` of the answer and of its stream
events) once the engine has taken the request, otherwise an id made for the HTTP request.
"""
DOCS_ASSETS = "/docs-assets"
TAGS = [
    {"name": "inference", "description": "Understanding and generation."},
    {"name": "openai", "description": "OpenAI-compatible routes (/v1)."},
    {"name": "operations", "description": "Probes, metrics and model information."},
]


def build_app(runtime: Runtime) -> FastAPI:
    """The app serving `runtime`; its lifespan starts the engine, warms it up, and drains it on shutdown."""
    app = _create(runtime.settings, _lifespan(runtime), runtime)
    app.state.runtime = runtime
    return app


def schema_app() -> FastAPI:
    """Routes and documentation only, with default settings and no model (for exporting the OpenAPI document)."""
    return _create(Settings.model_construct(), None, None)


def _create(settings: Settings, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None,
            runtime: Runtime | None) -> FastAPI:
    # /docs (Swagger UI) with its script and style served from the package (`DOCS_ASSETS`), not from a CDN: the page
    # works where the server has no internet, and loads nothing from elsewhere. No /redoc: ReDoc's bundle always
    # loads its maker's logo from their CDN.
    app = FastAPIOffline(title=TITLE, version=VERSION, description=DESCRIPTION, openapi_tags=TAGS, lifespan=lifespan,
                         static_url=DOCS_ASSETS, redoc_url=None)
    app.state.settings = settings
    app.state.started_at = int(time.time())  # the served model's `created` in the OpenAI model list
    for module in (understand, generate, openai_chat, openai_models, openai_images, health, info, metrics):
        app.include_router(module.router)
    if settings.playground == "on":
        app.include_router(playground.router)
    errors.install(app, {openai_errors.PREFIX: openai_errors.openai_error})
    # Added last = outermost: latency covers everything, including bodies refused for size.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ObserveMiddleware, metrics=runtime.metrics if runtime else None,
                       random_weights=runtime.info.random_weights if runtime else False,
                       description=runtime.info.description if runtime else "")
    allow_pixels(settings.max_image_pixels)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(docs.request_schemas())
        schemas.update(openai_chat_docs.request_schemas())
        schema["components"]["schemas"] = dict(sorted(schema["components"]["schemas"].items()))
        app.openapi_schema = schema
    return app.openapi_schema


def _lifespan(runtime: Runtime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = runtime.engine
        engine.start()
        # Warm up in the background: /health answers meanwhile, /ready says 503 until it is done.
        warming = asyncio.create_task(_warm_up(runtime))
        try:
            yield
        finally:
            warming.cancel()
            drain = runtime.settings.drain_timeout_s
            log.info("stopping the engine: up to %.0f s for requests still in flight", drain)
            await asyncio.to_thread(engine.shutdown, drain)
            log.info("engine stopped")

    return lifespan


async def _warm_up(runtime: Runtime) -> None:
    try:
        await asyncio.to_thread(runtime.engine.warmup)
    except Exception:  # noqa: BLE001 - the loop is dead: /health now says 503 and an orchestrator restarts us
        log.critical("engine warm-up failed; the server cannot answer requests", exc_info=True)
        return
    log.info("ready: %s (%s on %s)%s", runtime.info.name, runtime.info.dtype, runtime.info.device,
             " -- RANDOM WEIGHTS" if runtime.info.random_weights else
             f" -- {runtime.info.description}" if runtime.info.description else "")
