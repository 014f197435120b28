"""GET /health and GET /ready: probes for orchestrators. No API key needed."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import docs
from service.api.deps import RuntimeDep
from service.api.errors import NotReady
from service.api.protocol import HealthResponse, ReadyResponse
from service.engine.errors import EngineStopped

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    operation_id="get_health",
    summary="Liveness: is the engine loop running",
    description="200 while the engine's worker thread is alive (also during warm-up), 503 once it has stopped or "
                "died. Use as a liveness probe: a 503 here does not heal by itself.",
    response_model=HealthResponse,
    responses={200: {"content": {"application/json": {"example": {"status": "ok", "random_weights": False}}}},
               **docs.error_responses(503)},
)
async def get_health(runtime: RuntimeDep) -> HealthResponse:
    if not runtime.engine.alive:
        raise EngineStopped("the engine loop is not running")
    return HealthResponse(status="ok", random_weights=runtime.info.random_weights)


@router.get(
    "/ready",
    operation_id="get_readiness",
    summary="Readiness: can the server take requests now",
    description="200 once the model is loaded and warmed up and the server accepts requests; 503 while warming "
                "up. Once SIGTERM arrives the server stops accepting connections, so a probe is refused from then "
                "on (in-flight requests finish on their own connections). Use as a readiness probe.",
    response_model=ReadyResponse,
    responses={200: {"content": {"application/json": {"example": {"status": "ready", "random_weights": False}}}},
               **docs.error_responses(503)},
)
async def get_readiness(runtime: RuntimeDep) -> ReadyResponse:
    engine = runtime.engine
    if not engine.alive:
        raise EngineStopped("the engine loop is not running")
    if not engine.ready:
        raise NotReady("the model is warming up")
    if not engine.accepting:
        raise EngineStopped("the server is shutting down")
    return ReadyResponse(status="ready", random_weights=runtime.info.random_weights)
