"""The OpenAI routes keep the server's stated limits too: through the official `openai` SDK against a live server,
a conversation longer than the context is OpenAI's 400 context_length_exceeded, an answer count or an image count
that does not fit a 422 in OpenAI's error body, each naming the request field and the server setting to raise
(with the value it needs), and a request that could only time out in the queue is a RateLimitError at once with a
usable Retry-After."""

from __future__ import annotations

import time

import openai
import pytest

from service.processing import MIN_ANSWER_TOKENS
from tests.service.helpers import b64, image_bytes, rows_held_by_a_generation

PROMPT = "a red fox in the snow"


def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def _images_message(count: int, text: str = "What do these show?") -> dict:
    urls = ["data:image/png;base64," + b64(image_bytes(seed=i)) for i in range(count)]
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _chat(live, **fields):
    body = {"model": "janus", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return sdk(live).chat.completions.create(**{key: value for key, value in body.items() if value is not None})


def test_chat_serves_the_images_info_promises_and_refuses_one_more_naming_the_setting(make_server):
    live = make_server(max_seq_len=200)
    with live.client() as http:
        promised = http.get("/info").json()["limits"]["max_images"]
    assert 1 <= promised < 8
    # What /info promises leaves room for a short answer.
    answer = _chat(live, messages=[_images_message(promised)], max_tokens=MIN_ANSWER_TOKENS)
    assert answer.choices[0].finish_reason in ("stop", "length")
    # over the context: OpenAI's context_length_exceeded (a 400), saying which setting to raise
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(live, messages=[_images_message(promised + 1)], max_tokens=MIN_ANSWER_TOKENS)
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert "the server's context is 200 tokens" in error["message"]
    assert "raise JANUS_MAX_SEQ_LEN to at least" in error["message"] and error["param"] == "messages"
    # a conversation longer than the context: what to change is the conversation
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(live, messages=[_images_message(promised + 2)], max_tokens=MIN_ANSWER_TOKENS)
    error = caught.value.body
    assert "leaves no room for an answer" in error["message"] and error["param"] == "messages"
    assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_answer_length_over_the_context_names_the_field_and_the_setting(server, field):
    context = server.runtime.settings.max_seq_len
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(server, **{"max_tokens": None, field: 4000})
    error = caught.value.body
    # OpenAI names messages as the param of every context_length_exceeded; the message names the field to lower
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"
    assert f"lower {field} to at most" in error["message"] and "max_new_tokens" not in error["message"]
    needed = int(error["message"].rsplit("at least ", 1)[1])
    assert needed > context and f"raise JANUS_MAX_SEQ_LEN to at least {needed}" in error["message"]
    # the value the message names is enough: what it says to lower to is served
    room = int(error["message"].split(f"lower {field} to at most ", 1)[1].split(",", 1)[0])
    assert room == context - (needed - 4000)
    assert _chat(server, **{"max_tokens": None, field: room}).choices[0].finish_reason in ("stop", "length")


def test_more_answers_than_rows_names_n_and_the_rows_setting(make_server):
    live = make_server(max_rows=2)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _chat(live, n=3)
    error = caught.value.body
    assert error["param"] == "n"
    assert "lower n" in error["message"] and "raise JANUS_MAX_ROWS to at least 3" in error["message"]
    assert len(_chat(live, n=2).choices) == 2


def test_image_generation_serves_the_count_info_promises_and_names_n_and_the_rows_setting(make_server):
    live = make_server(max_rows=6)
    with live.client() as http:
        promised = http.get("/info").json()["limits"]["max_parallel_size"]
    assert promised == 3
    assert len(sdk(live).images.generate(prompt=PROMPT, n=promised).data) == promised
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(live).images.generate(prompt=PROMPT, n=promised + 1)
    error = caught.value.body
    assert error["param"] == "n" and "parallel_size" not in error["message"]
    assert "lower n" in error["message"] and "raise JANUS_MAX_ROWS to at least 8" in error["message"]
    unguided = sdk(live).images.generate(prompt=PROMPT, n=6, extra_body={"cfg_weight": 1})
    assert len(unguided.data) == 6


def test_a_context_too_short_for_an_image_refuses_generation_on_both_routes(make_server):
    # Room for a short question, not for a prompt and the image tokens it draws.
    image_tokens = 16  # the tiny checkpoint draws 4x4 tokens
    live = make_server(max_seq_len=image_tokens + 4)
    assert live.runtime.info.output_image_tokens == image_tokens
    with live.client() as http:
        assert http.get("/info").json()["limits"]["max_parallel_size"] == 0
        native = http.post("/generate", json={"prompt": PROMPT})
    assert native.status_code == 422 and "raise JANUS_MAX_SEQ_LEN to at least" in native.json()["error"]["message"]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(live).images.generate(prompt=PROMPT)
    assert caught.value.body["param"] == "prompt"
    assert "raise JANUS_MAX_SEQ_LEN to at least" in caught.value.body["message"]


def test_requests_that_could_only_time_out_in_the_queue_raise_rate_limit_at_once(make_server):
    timeout_s = 20.0
    live = make_server(max_rows=2, max_waiting=8, request_timeout_s=timeout_s)
    out: dict = {}
    refusals = []
    with rows_held_by_a_generation(live, lambda: out.update(reply=sdk(live).images.generate(prompt=PROMPT)),
                                   timeout_s):  # both rows
        started = time.monotonic()
        for call in (lambda: sdk(live).images.generate(prompt="a cat"),
                     lambda: _chat(live, messages=[_images_message(1)])):
            with pytest.raises(openai.RateLimitError) as caught:
                call()
            refusals.append(caught.value)
        waited = time.monotonic() - started
    for refused in refusals:
        assert refused.body["code"] == "overloaded" and "time limit" in refused.body["message"]
        assert 1 <= int(refused.response.headers["retry-after"]) <= 60
    assert waited < timeout_s  # refused at once rather than left to time out (a bound, not a timing claim)
    assert len(out["reply"].data) == 1
    assert live.runtime.engine.stats()["waiting"] == 0
