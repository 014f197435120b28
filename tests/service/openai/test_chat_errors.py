"""Failures of /v1/chat/completions reach the `openai` SDK as its typed exceptions, with OpenAI's error body."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.service.helpers import b64, image_bytes, wait_until

PICTURE = "data:image/png;base64," + b64(image_bytes(seed=1))


def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def ask(live, **fields):
    body = {"model": "janus", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return sdk(live).chat.completions.create(**body)


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "messages[0].content[0].image_url.url", "does not fetch"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}]},
     "messages[0].content[0].image_url.url", "not valid base64"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(b"not an image")}}]}]},
     None, "not an image"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format",
     "json_schema"),
    ({"logit_bias": {"50256": -100}}, "logit_bias", "not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "send 0"),
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio", "not supported"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, "messages",
     "must be the user's"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}, {"role": "user", "content": "Hi"}]},
     "messages[0].role", "no tools"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PICTURE}}]},
                   {"role": "user", "content": "Hi"}]}, "messages[0].content[0]", "text parts only"),
])
def test_requests_the_server_cannot_serve_raise_bad_request_naming_the_field(server, fields, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, **fields)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param


def test_out_of_range_options_raise_unprocessable_entity_naming_the_field(server):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(server, temperature=5)
    assert caught.value.body["param"] == "temperature" and caught.value.body["code"] == "validation_error"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(server, messages=[{"role": "user", "content": [{"type": "video", "video": {}}]}])
    assert caught.value.body["param"].startswith("messages[0].content")


# LiteLLM maps an OpenAI-compatible server's error to its ContextWindowExceededError (which its context-window
# fallbacks catch) by the message alone: `ExceptionCheckers.is_error_str_context_window_exceeded` in
# litellm/litellm_core_utils/exception_mapping_utils.py looks for "this model's maximum context length is" in the
# lower-cased message (for the openai, openai-compatible and openai-like providers alike), and gives up on any
# message with "string_above_max_length" in it.
LITELLM_CONTEXT_PATTERN = "this model's maximum context length is"


@pytest.mark.parametrize(("fields", "requested"), [
    ({"messages": [{"role": "user", "content": "hello " * 3000}]}, "leaves no room for an answer"),
    ({"max_tokens": 4000}, "lower max_tokens to at most"),
    ({"max_tokens": None, "max_completion_tokens": 4000}, "lower max_completion_tokens to at most"),
], ids=["conversation", "max_tokens", "max_completion_tokens"])
def test_too_long_for_the_context_is_openais_context_length_exceeded(server, fields, requested):
    context = server.runtime.settings.max_seq_len
    body = {"model": "janus", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).chat.completions.create(**{key: value for key, value in body.items() if value is not None})
    error = caught.value
    assert error.status_code == 400 and error.code == "context_length_exceeded"
    assert error.type == "invalid_request_error" and error.param == "messages"
    message = error.body["message"]
    assert message.startswith(f"This model's maximum context length is {context} tokens")
    assert requested in message and "raise JANUS_MAX_SEQ_LEN to at least" in message
    for text in (error.message, str(error)):
        assert LITELLM_CONTEXT_PATTERN in text.lower() and "string_above_max_length" not in text.lower()


def test_the_native_route_keeps_its_422_for_the_same_conversation(client):
    reply = client.post("/understand", json={"question": "hello " * 2000})
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_request"
    assert "raise JANUS_MAX_SEQ_LEN to at least" in reply.json()["error"]["message"]


def test_more_answers_than_rows_is_unprocessable(make_server):
    live = make_server(max_rows=2)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(live, n=3)
    assert "lower n" in caught.value.body["message"]


def test_a_full_server_raises_rate_limit_with_retry_after(make_server):
    live = make_server(max_rows=1, max_waiting=0)
    gate = live.gate()
    running = threading.Thread(target=ask, args=(live,), daemon=True)
    running.start()
    wait_until(lambda: gate.seen, "the first request to run")
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            ask(live)
        assert caught.value.body["type"] == "rate_limit_error" and caught.value.body["code"] == "overloaded"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        gate.release()
        running.join(60)


def test_a_model_failure_raises_internal_server_error_and_leaves_the_others_alone(make_server):
    live = make_server()

    def fail_seed_666(request) -> None:
        if request.params.seed == 666:
            raise RuntimeError("injected")

    live.runtime.engine.fault_hook = fail_seed_666
    with pytest.raises(openai.InternalServerError) as caught:
        ask(live, seed=666)
    assert caught.value.status_code == 500 and caught.value.body["type"] == "server_error"
    assert caught.value.body["code"] == "model_error"
    assert ask(live, seed=1).choices[0].finish_reason in ("stop", "length")


def test_a_failure_mid_stream_raises_in_the_sdk(make_server):
    live = make_server()
    calls = []

    def fail_on_third_step(request) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")

    live.runtime.engine.fault_hook = fail_on_third_step
    stream = sdk(live).chat.completions.create(model="janus", max_tokens=20, stream=True,
                                               messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "processing failed" in caught.value.message


def test_a_server_warming_up_raises_internal_server_error_with_retry_after(make_server):
    live = make_server()
    live.runtime.engine._ready.clear()  # as before warm-up finishes
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            ask(live)
        assert caught.value.status_code == 503 and caught.value.body["code"] == "not_ready"
        assert caught.value.response.headers["retry-after"]
    finally:
        live.runtime.engine._ready.set()
