"""What /v1/chat/completions says about a request it cannot take: in the user's terms (the request field as OpenAI
names it, one message per field, no validator internals), with the statuses the native routes give the same
mistakes. Through the official `openai` SDK against a live server (raw HTTP where the SDK cannot send the body)."""

from __future__ import annotations

import json

import openai
import pytest

from service.api.protocol import MAX_IMAGES
from tests.service.helpers import b64, image_bytes

PICTURE = b64(image_bytes(seed=3, size=(48, 40)))


def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def ask(live, **fields):
    body = {"model": "janus", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return sdk(live).chat.completions.create(**body)


def refused(live, error: type[openai.APIStatusError], **fields) -> dict:
    with pytest.raises(error) as caught:
        ask(live, **fields)
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    return body


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


# NaN and Infinity


@pytest.mark.parametrize("field", ["temperature", "top_p", "frequency_penalty"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_not_finite_numbers_as_on_the_native_routes(client, field, value):
    # Python's json writes NaN / Infinity for these (the openai SDK itself refuses to send them).
    headers = {"content-type": "application/json"}
    body = json.dumps({"model": "janus", "messages": [{"role": "user", "content": "Hi"}], field: float(value)})
    reply = client.post("/v1/chat/completions", content=body, headers=headers)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and error["code"] == "validation_error"
    assert error["message"] == f"{field}: must be a finite number"
    native = client.post("/understand", content=json.dumps({"question": "Hi", "temperature": float(value)}),
                         headers=headers)
    assert native.status_code == 422 and "must be a finite number" in native.json()["error"]["message"]


# the user's field paths and one message per field


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"messages": [{"role": "user", "content": 123}]}, "messages[0].content",
     "messages[0].content: must be a string or a list of content parts"),
    ({"stop": 123}, "stop", "stop: must be a string or a list of strings"),
    ({"tool_choice": 5}, "tool_choice", "tool_choice: must be a string or an object"),
    ({"stop": ["end", 7]}, "stop[1]", "stop[1]: must be a valid string"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text",
     "messages[0].content[0].text: must be a valid string"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text",
     "messages[0].content[0].text: Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 3}}]}]},
     "messages[0].content[0].image_url.url", "messages[0].content[0].image_url.url: must be a valid string"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]",
     "messages[0].content[0]: must be an object"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages[0].content[0].type",
     "messages[0].content[0].type: must be one of 'text', 'image_url', 'refusal', 'input_audio', 'file' (got "
     "'video')"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type",
     "messages[0].content[0].type: Field required"),
    ({"temperature": 5}, "temperature", "temperature: must be less than or equal to 2"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role",
     "messages[0].role: must be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'"),
])
def test_a_wrong_value_is_named_by_its_request_field_in_one_plain_message(server, fields, param, message):
    error = refused(server, openai.UnprocessableEntityError, **fields)
    assert error["param"] == param and error["message"] == message
    assert error["code"] == "validation_error" and error["type"] == "invalid_request_error"
    for internal in ("body.", "tagged-union", "function-after", "_note_unknown_fields", "list[", ".str"):
        assert internal not in error["message"] and internal not in error["param"]


# too many images: one status on every route


def test_more_images_than_allowed_is_422_on_v1_as_on_understand(server, client):
    count = MAX_IMAGES + 1
    error = refused(server, openai.UnprocessableEntityError, messages=[{"role": "user", "content": [
        *[image("data:image/png;base64," + PICTURE)] * count, {"type": "text", "text": "Compare them."}]}])
    assert error["param"] == "messages" and error["code"] == "validation_error"
    assert f"{count} images" in error["message"] and f"at most {MAX_IMAGES}" in error["message"]
    tags = "<image_placeholder>" * count
    native = client.post("/understand", json={"question": f"{tags}Compare them.", "images": [PICTURE] * count})
    assert native.status_code == 422, native.text


# empty questions


@pytest.mark.parametrize("content", ["", "   \n\t", [], [{"type": "text", "text": ""}],
                                     [{"type": "text", "text": " "}, {"type": "text", "text": "\n"}], None],
                         ids=["empty", "whitespace", "no-parts", "empty-part", "blank-parts", "null"])
def test_a_user_message_with_nothing_in_it_is_refused_as_understand_refuses_an_empty_question(server, client,
                                                                                              content):
    error = refused(server, openai.UnprocessableEntityError, messages=[{"role": "user", "content": content}])
    assert error["param"] == "messages[0].content" and error["code"] == "validation_error"
    assert "needs text or an image" in error["message"]
    native = client.post("/understand", json={"question": " ", "images": [PICTURE]})
    assert native.status_code == 422


def test_an_empty_earlier_user_message_is_refused_too(server):
    error = refused(server, openai.UnprocessableEntityError, messages=[
        {"role": "user", "content": ""}, {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "Hi"}])
    assert error["param"] == "messages[0].content"


def test_an_image_without_text_is_a_question_as_a_lone_image_tag_is_on_understand(server, client):
    answer = ask(server, messages=[{"role": "user", "content": [image("data:image/png;base64," + PICTURE)]}])
    assert answer.choices[0].finish_reason in ("stop", "length")
    native = client.post("/understand", json={"question": "<image_placeholder>", "images": [PICTURE],
                                              "max_new_tokens": 3})
    assert native.status_code == 200, native.text


# data URLs


@pytest.mark.parametrize("prefix", ["DATA:IMAGE/PNG;BASE64,", "Data:image/png;Base64,", "data:image/PNG;base64,"])
def test_data_url_scheme_media_type_and_base64_are_case_insensitive(server, client, prefix):
    plain = ask(server, messages=[{"role": "user", "content": [image("data:image/png;base64," + PICTURE),
                                                                {"type": "text", "text": "What is it?"}]}])
    upper = ask(server, messages=[{"role": "user", "content": [image(prefix + PICTURE),
                                                                {"type": "text", "text": "What is it?"}]}])
    assert upper.choices[0].message.content == plain.choices[0].message.content
    assert upper.usage.prompt_tokens == plain.usage.prompt_tokens
    native = client.post("/understand", json={"question": "What?", "images": [prefix + PICTURE],
                                              "max_new_tokens": 2})
    assert native.status_code == 200, native.text


def test_a_data_url_that_is_not_base64_still_says_so(server):
    error = refused(server, openai.BadRequestError, messages=[{"role": "user", "content": [
        image("data:image/png,rawbytes")]}])
    assert "base64" in error["message"] and error["param"] == "messages[0].content[0].image_url.url"


# tools


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "lookup"}}])
def test_a_tool_choice_that_needs_tools_says_the_server_has_none(server, choice):
    error = refused(server, openai.BadRequestError, tool_choice=choice)
    assert error["param"] == "tool_choice"
    assert "needs tools" in error["message"] and "calls no tools" in error["message"]
    assert "'none' or 'auto'" in error["message"]
    assert "must be 'none'" not in error["message"]


def test_function_call_asking_for_a_function_says_the_server_has_none(server):
    error = refused(server, openai.BadRequestError, function_call={"name": "lookup"})
    assert error["param"] == "function_call" and "calls no tools" in error["message"]
    assert "'none' or 'auto'" in error["message"]


@pytest.mark.parametrize(("role", "article"), [("assistant", "an assistant"), ("system", "a system"),
                                               ("developer", "a developer")])
def test_messages_name_the_role_with_the_right_article(server, role, article):
    messages = [{"role": role, "content": [image("data:image/png;base64," + PICTURE)]},
                {"role": "user", "content": "Hi"}]
    error = refused(server, openai.BadRequestError, messages=messages)
    assert f"{article} message takes text parts only" in error["message"]

