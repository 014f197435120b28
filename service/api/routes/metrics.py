"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api import docs
from service.api.auth import Authenticated
from service.api.deps import RuntimeDep

router = APIRouter(tags=["operations"], dependencies=[Authenticated])

EXAMPLE = """\
# HELP janus_queue_waiting_requests Requests waiting for free rows.
# TYPE janus_queue_waiting_requests gauge
janus_queue_waiting_requests 0.0
# HELP janus_running_rows KV-cache rows in use, by request kind.
# TYPE janus_running_rows gauge
janus_running_rows{kind="understand"} 3.0
janus_running_rows{kind="generate"} 8.0
"""


@router.get(
    "/metrics",
    operation_id="get_metrics",
    summary="Prometheus metrics",
    description="Queue depth, running rows by kind, batch size, step time, generated tokens by kind (rate() gives "
                "tokens/s), request latency by route and status, engine failures by kind, error responses by type.",
    response_class=Response,
    responses={200: {"description": "Prometheus text exposition format.",
                     "content": {"text/plain": {"schema": {"type": "string"}, "example": EXAMPLE}}},
               **docs.error_responses(401)},
)
async def get_metrics(runtime: RuntimeDep) -> Response:
    runtime.metrics.refresh(runtime.engine.stats(), runtime.engine.ready)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
