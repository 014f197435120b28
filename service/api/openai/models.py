"""GET /v1/models: the served model in OpenAI's list shape (and GET /v1/models/{model} for one)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.api import docs
from service.api.auth import Authenticated
from service.api.deps import RuntimeDep

OWNER = "janus-serve"

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Authenticated])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _card(request: Request, runtime: RuntimeDep) -> ModelCard:
    return ModelCard(id=runtime.info.name, created=_created(runtime.settings.model_dir, request.app.state.started_at),
                     owned_by=OWNER)


@functools.cache
def _created(model_dir: Path | None, started_at: int) -> int:
    """When the served checkpoint was written: the time of its config.json. The same at every start of the same
    checkpoint (clients that cache the model list by `created` see no new model), and new when the checkpoint is
    replaced. Without a readable config.json: the start time."""
    from service.runtime import default_model_dir  # what the server loads when no model directory is given

    try:
        return int((Path(model_dir or default_model_dir()) / "config.json").stat().st_mtime)
    except OSError as err:
        log.warning("cannot read the checkpoint's time for the model list (%s); using the start time", err)
        return started_at


CARD_EXAMPLE = {"id": "Janus-Pro-1B", "object": "model", "created": 1767225600, "owned_by": OWNER}


@router.get("/models", operation_id="list_models", summary="List the served model (OpenAI-compatible)",
            description="The one model this server serves, in OpenAI's list shape. Its `id` is the name to show "
                        "users; chat and image requests accept any `model` value and answer with this one.",
            response_model=ModelList,
            responses={200: {"description": "The model list.",
                             "content": {"application/json": {"example": {"object": "list",
                                                                          "data": [CARD_EXAMPLE]}}}},
                       **docs.error_responses(401, dialect=docs.OPENAI)})
async def list_models(request: Request, runtime: RuntimeDep) -> ModelList:
    return ModelList(data=[_card(request, runtime)])


@router.get("/models/{model:path}", operation_id="retrieve_model",
            summary="Describe the served model (OpenAI-compatible)",
            description="The served model's card; any other name is a 404.", response_model=ModelCard,
            responses={200: {"description": "The model card.",
                             "content": {"application/json": {"example": CARD_EXAMPLE}}},
                       **docs.error_responses(401, 404, dialect=docs.OPENAI)},
            # read from the path by hand: a typed parameter would add a 422 in FastAPI's own error shape
            openapi_extra={"parameters": [{"name": "model", "in": "path", "required": True,
                                           "schema": {"type": "string"}, "description": "The model's id."}]})
async def retrieve_model(request: Request, runtime: RuntimeDep) -> ModelCard:
    model = request.path_params["model"]
    card = _card(request, runtime)
    if model != card.id:
        raise HTTPException(404, f"the model {model!r} does not exist; this server serves {card.id!r}")
    return card
