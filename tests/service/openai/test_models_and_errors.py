"""The /v1 plumbing through the official `openai` SDK: the model list, OpenAI's error body with the native statuses,
the API key as the SDK sends it, and unknown request fields tolerated on /v1 only."""

from __future__ import annotations

import logging

import openai
import pytest
from pydantic import Field

from service.api.openai import base
from service.api.openai.base import OpenAIModel
from service.api.openai.errors import loc_to_param
from tests.service.helpers import b64, image_bytes, start_server, test_settings


def sdk(live, key: str = "unused", **kwargs) -> openai.OpenAI:
    # No retries: a test must see the first answer, not the SDK's retry of it.
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, **kwargs)


def test_models_list_names_the_served_model(server):
    listed = sdk(server).models.list()
    assert [m.id for m in listed.data] == [server.runtime.info.name]
    card = listed.data[0]
    assert card.object == "model" and card.owned_by == "janus-serve" and card.created > 1_700_000_000


def test_retrieving_the_served_model_gives_its_card_and_another_name_is_not_found(server):
    client = sdk(server)
    assert client.models.retrieve(server.runtime.info.name).id == server.runtime.info.name
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    error = caught.value.body
    assert error["type"] == "not_found_error" and error["code"] == "not_found"
    assert "gpt-4o" in error["message"] and server.runtime.info.name in error["message"]


def test_v1_errors_have_openai_shape_and_native_errors_keep_theirs(client):
    v1 = client.get("/v1/nowhere")
    assert v1.status_code == 404
    assert set(v1.json()["error"]) == {"message", "type", "param", "code"}
    native = client.get("/nowhere")
    assert native.status_code == 404
    assert set(native.json()["error"]) == {"type", "message", "status"}


def test_body_over_the_limit_on_v1_is_413_in_openai_shape(make_server):
    live = make_server(max_body_bytes=1024)
    with live.client() as http:
        reply = http.post("/v1/chat/completions", content=b"x" * 2000, headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.json()["error"]["code"] == "payload_too_large"


@pytest.fixture(scope="module")
def locked(tiny_dir):
    live = start_server(test_settings(tiny_dir, api_key="s3cret-key"))
    yield live
    live.stop()


def test_the_sdk_sends_the_key_as_the_server_expects(locked):
    assert [m.id for m in sdk(locked, key="s3cret-key").models.list().data] == [locked.runtime.info.name]


def test_a_wrong_key_raises_authentication_error(locked):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(locked, key="wrong").models.list()
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error" and caught.value.body["code"] == "unauthorized"
    assert "wrong" in caught.value.body["message"]


def test_a_missing_key_is_401_in_openai_shape(locked):
    with locked.client() as http:
        reply = http.get("/v1/models")
    assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json() == {"error": {"message": reply.json()["error"]["message"], "type": "authentication_error",
                                      "param": None, "code": "unauthorized"}}
    assert "missing" in reply.json()["error"]["message"]


def test_async_client_lists_models_too(server):
    import asyncio

    async def listed() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
            return [m.id async for m in client.models.list()]

    assert asyncio.run(listed()) == [server.runtime.info.name]


# unknown fields


class _Options(OpenAIModel):
    temperature: float = Field(1.0, ge=0.0)


@pytest.fixture
def fresh_memory(monkeypatch) -> base._UnknownFields:
    """A memory of unknown field names of its own (the suite's fuzzing fills the server's with random names)."""
    memory = base._UnknownFields(limit=3)
    monkeypatch.setattr(base, "unknown_fields", memory)
    return memory


def test_unknown_fields_are_accepted_ignored_and_logged_once_per_name(fresh_memory):
    # A handler of its own, and logging switched on for the test: libraries imported elsewhere in the suite change
    # the process-wide logging state (levels, `logging.disable`, disabled loggers).
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("service.api.openai.base")
    level, disabled, globally = logger.level, logger.disabled, logging.root.manager.disable
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    logging.disable(logging.NOTSET)
    try:
        first = _Options.model_validate({"temperature": 0.5, "reasoning_effort_x": "high"})
        second = _Options.model_validate({"reasoning_effort_x": "low", "another_new_field_x": 1})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
        logging.disable(globally)
    assert first.temperature == 0.5 and second.temperature == 1.0
    logged = [r.getMessage() for r in records if "unknown request field" in r.getMessage()]
    assert len(logged) == 2, logged
    assert "'reasoning_effort_x'" in logged[0] and "'another_new_field_x'" in logged[1]
    assert fresh_memory.seen() == {"_Options.reasoning_effort_x", "_Options.another_new_field_x"}
    # Names are the client's to choose: only a bounded number is remembered and logged.
    _Options.model_validate({f"made_up_{i}": i for i in range(10)})
    assert len(fresh_memory.seen()) == 3


def test_declared_fields_are_still_checked():
    with pytest.raises(ValueError, match="greater than or equal"):
        _Options.model_validate({"temperature": -1, "whatever": 1})


def test_native_routes_still_refuse_unknown_fields(client):
    reply = client.post("/understand", json={"question": "What?", "images": [b64(image_bytes())], "max_tokens": 3})
    assert reply.status_code == 422
    assert "max_tokens" in reply.text


@pytest.mark.parametrize(("loc", "param"), [("body.messages.0.content", "messages[0].content"),
                                            ("body.temperature", "temperature"), ("body", None),
                                            ("body.messages.1.content.2.image_url.url",
                                             "messages[1].content[2].image_url.url")])
def test_validation_locations_read_as_openai_params(loc, param):
    assert loc_to_param(loc) == param
