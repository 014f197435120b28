"""POST /v1/images/generations through the official `openai` SDK against a live server on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import numpy as np
import openai
import paddle
import pytest
from PIL import Image

from model import reference
from model.chat_template import generation_prompt
from service.engine.previews import GREY

PROMPT = "a red fox in the snow"


def sdk(live, **kwargs) -> openai.OpenAI:
    # No retries: a test must see the first answer, not the SDK's retry of it.
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, **kwargs)


def _open(b64_json: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    image.load()
    return image


def _reference_tokens(model, tokenizer, prompt: str, n: int, seed: int, cfg_weight: float = 5.0,
                      temperature: float = 1.0) -> np.ndarray:
    ids = np.array(tokenizer.encode(generation_prompt(prompt, "deepseek").text))
    return reference.generate(model, ids, tokenizer.pad_id, parallel_size=n, cfg_weight=cfg_weight,
                              temperature=temperature, seed=seed)


def _side(server) -> int:
    return server.runtime.info.output_image_size


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_generate_returns_n_images_of_the_asked_format_at_the_models_size(server, tiny_tokenizer, fmt):
    side = _side(server)
    before = int(time.time())
    response = sdk(server).images.generate(prompt=PROMPT, model="janus", n=2, size=f"{side}x{side}",
                                           output_format=fmt, extra_body={"seed": 5})
    assert len(response.data) == 2
    for item in response.data:
        image = _open(item.b64_json)
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert image.size == (side, side) and image.mode == "RGB"
    assert response.output_format == fmt and response.size == f"{side}x{side}" and response.background == "opaque"
    assert before <= response.created <= int(time.time())
    prompt_tokens = len(tiny_tokenizer.encode(generation_prompt(PROMPT, "deepseek").text))
    drawn = 2 * server.runtime.info.output_image_tokens
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (prompt_tokens, drawn,
                                                                            prompt_tokens + drawn)
    assert usage.input_tokens_details.text_tokens == prompt_tokens and usage.input_tokens_details.image_tokens == 0
    assert usage.output_tokens_details.image_tokens == drawn
    assert response.seed == 5  # Janus's own field, beside OpenAI's


def test_seeded_images_equal_generate_and_the_reference_loop(server, client, tiny_model, tiny_tokenizer):
    v1 = sdk(server).images.generate(prompt=PROMPT, n=2, size="auto",
                                     extra_body={"seed": 21, "cfg_weight": 3.0, "temperature": 0.9})
    native = client.post("/generate", json={"prompt": PROMPT, "parallel_size": 2, "seed": 21, "cfg_weight": 3.0,
                                            "temperature": 0.9, "format": "png"}).json()
    assert [item.b64_json for item in v1.data] == [image["data"] for image in native["images"]]
    tokens = _reference_tokens(tiny_model, tiny_tokenizer, PROMPT, 2, seed=21, cfg_weight=3.0, temperature=0.9)
    expected = tiny_model.decode_images(paddle.to_tensor(tokens))
    for index, item in enumerate(v1.data):
        np.testing.assert_array_equal(np.asarray(_open(item.b64_json)), expected[index])


def test_compression_is_the_lossy_encoders_quality(server):
    sizes = {}
    for fmt in ("jpeg", "webp"):
        for quality in (5, 100):
            response = sdk(server).images.generate(prompt=PROMPT, output_format=fmt, output_compression=quality,
                                                   extra_body={"seed": 1})
            sizes[fmt, quality] = len(base64.b64decode(response.data[0].b64_json))
    assert sizes["jpeg", 5] < sizes["jpeg", 100] and sizes["webp", 5] < sizes["webp", 100]


def _expected_preview(model, final_tokens: np.ndarray, steps: int) -> np.ndarray:
    """The drawing after `steps`: the final grid's first `steps` codes (drawn codes never change), a placeholder
    code 0 elsewhere, decoded by the model, and every undrawn position's block painted grey by hand."""
    partial = final_tokens.copy()
    partial[:, steps:] = 0
    images = model.decode_images(paddle.to_tensor(partial))
    grid = model.cfg.gen_vision.grid
    cell = images.shape[1] // grid
    for position in range(steps, grid * grid):
        r, c = divmod(position, grid)
        images[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = GREY
    return images


class PreviewPacer:
    """Holds the engine, in the step after each preview point, until the client has seen that preview's events:
    previews decode at low priority and the final images may overtake them (the server then drops them), which a
    loaded machine must not turn into a different event sequence here."""

    def __init__(self, live, steps: tuple[int, ...]) -> None:
        self._seen = [threading.Event() for _ in steps]
        self._index = dict(zip(steps, self._seen, strict=True))
        self._engine = live.runtime.engine

    def __enter__(self) -> PreviewPacer:
        self._engine.fault_hook = self._hook
        return self

    def __exit__(self, *exc: object) -> None:
        self._engine.fault_hook = None

    def _hook(self, request) -> None:  # engine thread, each request, each step
        if request.steps_done in request.preview_steps:
            self._index[request.steps_done].wait(timeout=120)

    def saw(self, event) -> None:
        if event.type == "image_generation.partial_image":
            self._seen[event.partial_image_index].set()


def _paced(live, stream, steps: tuple[int, ...]) -> list:
    events = []
    with PreviewPacer(live, steps) as pacer:
        for event in stream:
            events.append(event)
            pacer.saw(event)
    return events


def test_streamed_generation_sends_partial_images_then_one_completed_event_per_image(server, tiny_model,
                                                                                    tiny_tokenizer):
    side = _side(server)
    total = server.runtime.info.output_image_tokens
    stream = sdk(server).images.generate(prompt=PROMPT, n=2, stream=True, partial_images=2,
                                         extra_body={"seed": 8})
    events = _paced(server, stream, (total // 3, 2 * total // 3))
    kinds = [(e.type, getattr(e, "partial_image_index", None), e.image_index) for e in events]
    assert kinds == [("image_generation.partial_image", 0, 0), ("image_generation.partial_image", 0, 1),
                     ("image_generation.partial_image", 1, 0), ("image_generation.partial_image", 1, 1),
                     ("image_generation.completed", None, 0), ("image_generation.completed", None, 1)]
    for event in events:
        assert isinstance(event, openai.types.ImageGenPartialImageEvent | openai.types.ImageGenCompletedEvent)
        assert event.output_format == "png" and event.size == f"{side}x{side}" and event.created_at > 0

    tokens = _reference_tokens(tiny_model, tiny_tokenizer, PROMPT, 2, seed=8)
    final = tiny_model.decode_images(paddle.to_tensor(tokens))
    for preview, steps in ((0, total // 3), (1, 2 * total // 3)):
        expected = _expected_preview(tiny_model, tokens, steps)
        for event in events[2 * preview:2 * preview + 2]:
            got = np.asarray(_open(event.b64_json))
            np.testing.assert_array_equal(got, expected[event.image_index])
            assert (got == GREY).any() and not np.array_equal(got, final[event.image_index])
    for event in events[4:]:
        np.testing.assert_array_equal(np.asarray(_open(event.b64_json)), final[event.image_index])
        assert event.usage.output_tokens == 2 * total and event.seed == 8


def test_stream_without_partial_images_sends_only_the_completed_images(server):
    events = list(sdk(server).images.generate(prompt=PROMPT, stream=True, output_format="webp",
                                              extra_body={"seed": 2}))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert _open(events[0].b64_json).format == "WEBP"


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"size": "1024x1024"}, "size", "x"),
    ({"response_format": "url"}, "response_format", "inline"),
    ({"output_format": "gif"}, "output_format", "png, jpeg, webp"),
    ({"output_format": "png", "output_compression": 50}, "output_compression", "jpeg and webp"),
    ({"background": "transparent"}, "background", "opaque"),
    ({"quality": "high"}, "quality", "auto"),
    ({"style": "vivid"}, "style", "prompt"),
])
def test_what_janus_cannot_do_raises_bad_request_naming_the_field(server, fields, param, says):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).images.generate(prompt=PROMPT, **fields)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"] and says in error["message"]


def test_an_unsupported_size_names_the_size_the_server_draws(server):
    side = _side(server)
    with pytest.raises(openai.BadRequestError, match=f"send size '{side}x{side}' or 'auto'"):
        sdk(server).images.generate(prompt=PROMPT, size="512x512")


@pytest.mark.parametrize(("fields", "param"), [({"n": 17}, "n"), ({"extra_body": {"cfg_weight": 0.5}}, "cfg_weight"),
                                               ({"partial_images": 4, "stream": True}, "partial_images"),
                                               ({"extra_body": {"seed": -1}}, "seed")])
def test_out_of_range_values_raise_unprocessable_entity_naming_the_field(server, fields, param):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        result = sdk(server).images.generate(prompt=PROMPT, **fields)
        list(result) if fields.get("stream") else None
    assert caught.value.body["param"] == param


def test_more_images_than_the_server_has_rows_for_is_unprocessable_and_says_n(server):
    rows = server.runtime.settings.max_rows
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(server).images.generate(prompt=PROMPT, n=rows // 2 + 1)
    assert caught.value.body["param"] == "n" and "lower n" in caught.value.body["message"]
    assert "parallel_size" not in caught.value.body["message"]


@pytest.mark.parametrize("asked", [None, "auto", "standard"])
def test_the_answer_and_the_stream_state_one_quality(server, asked):
    quality = {} if asked is None else {"quality": asked}
    plain = sdk(server).images.generate(prompt=PROMPT, extra_body={"seed": 6}, **quality)
    events = list(sdk(server).images.generate(prompt=PROMPT, stream=True, partial_images=1, extra_body={"seed": 6},
                                              **quality))
    assert {plain.quality} | {event.quality for event in events} == {"auto"}


def test_neutral_values_and_unknown_fields_are_accepted(server):
    response = sdk(server).images.generate(
        prompt=PROMPT, model="gpt-image-1", quality="auto", background="opaque", moderation="low", user="u-1",
        response_format="b64_json", size="auto", extra_body={"seed": 4, "complexity": "high", "some_new_field": 1})
    assert len(response.data) == 1 and response.safety_identifier == "u-1"


def test_the_async_client_generates_and_streams(server):
    async def run(pacer: PreviewPacer) -> tuple[openai.types.ImagesResponse, list]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
            plain = await client.images.generate(prompt=PROMPT, extra_body={"seed": 30})
            stream = await client.images.generate(prompt=PROMPT, stream=True, partial_images=1,
                                                  extra_body={"seed": 30})
            events = []
            async for event in stream:
                events.append(event)
                pacer.saw(event)
            return plain, events

    with PreviewPacer(server, (server.runtime.info.output_image_tokens // 2,)) as pacer:
        plain, events = asyncio.run(run(pacer))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert events[-1].b64_json == plain.data[0].b64_json


def test_a_failure_mid_stream_raises_in_the_sdk_and_the_server_goes_on(make_server):
    live = make_server()

    def fail(request) -> None:
        if request.steps_done == 3:
            raise RuntimeError("injected fault")

    live.runtime.engine.fault_hook = fail
    with pytest.raises(openai.APIError, match="injected fault"):
        list(sdk(live).images.generate(prompt=PROMPT, stream=True, partial_images=3))
    live.runtime.engine.fault_hook = None
    assert len(sdk(live).images.generate(prompt=PROMPT).data) == 1


@pytest.mark.slow
def test_the_demo_checkpoint_draws_384x384_images_and_refuses_other_sizes():
    from model.tiny_checkpoint import demo_checkpoint_dir
    from tests.service.helpers import start_server, test_settings

    live = start_server(test_settings(demo_checkpoint_dir(), max_seq_len=1024, max_rows=2))
    try:
        client = sdk(live)
        response = client.images.generate(prompt=PROMPT, size="384x384", output_format="jpeg",
                                          extra_body={"seed": 1, "cfg_weight": 1})
        assert response.size == "384x384" and _open(response.data[0].b64_json).size == (384, 384)
        with pytest.raises(openai.BadRequestError, match="send size '384x384' or 'auto'"):
            client.images.generate(prompt=PROMPT, size="1024x1024")
    finally:
        live.stop()


def test_openapi_documents_the_route_its_fields_errors_and_stream():
    import yaml

    from service.api.export_openapi import render

    spec = yaml.safe_load(render())
    op = spec["paths"]["/v1/images/generations"]["post"]
    assert op["operationId"] == "create_image"
    assert {"application/json", "text/event-stream"} == set(op["responses"]["200"]["content"])
    assert {"400", "401", "422", "429", "503"} <= set(op["responses"])
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = set(spec["components"]["schemas"][ref]["properties"])
    assert {"prompt", "model", "n", "size", "response_format", "output_format", "output_compression", "quality",
            "style", "background", "moderation", "user", "stream", "partial_images", "cfg_weight", "temperature",
            "seed"} <= fields
