"""Route dependencies: the runtime the app serves, gated on the engine being ready."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.errors import NotReady
from service.engine.errors import EngineStopped
from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_ready_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    engine = runtime.engine
    if not engine.alive:
        raise EngineStopped("the engine is not running")
    if not engine.ready:
        raise NotReady("the model is warming up; retry shortly")
    if not engine.accepting:
        raise EngineStopped("the server is shutting down and accepts no new requests")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReadyRuntimeDep = Annotated[Runtime, Depends(get_ready_runtime)]
