"""POST /generate end to end: real uvicorn, real engine, real tiny model."""

from __future__ import annotations

import base64

import numpy as np

from model import reference
from model.chat_template import generation_prompt
from tests.service.helpers import decode_b64_image, plain_decode, sse_events


def _pixels(body) -> list[np.ndarray]:
    return [np.asarray(decode_b64_image(image["data"])) for image in body["images"]]


def test_png_images_equal_the_reference_loop_decoded(client, server, tiny_model, tiny_tokenizer):
    reply = client.post("/generate", json={"prompt": "a red fox in the snow", "parallel_size": 2, "seed": 21,
                                           "format": "png"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    ids = np.array(tiny_tokenizer.encode(generation_prompt("a red fox in the snow", "deepseek").text))
    tokens = reference.generate(tiny_model, ids, tiny_tokenizer.pad_id, parallel_size=2, cfg_weight=5.0,
                                temperature=1.0, seed=21)
    expected = plain_decode(server.runtime.engine, tokens)
    got = _pixels(body)
    assert len(got) == 2
    for index in range(2):
        np.testing.assert_array_equal(got[index], expected[index])
    size = tiny_model.cfg.gen_vision.image_size
    assert (body["width"], body["height"], body["format"], body["media_type"]) == (size, size, "png", "image/png")
    assert body["seed"] == 21 and body["random_weights"] is True
    assert reply.headers["x-request-id"] == body["id"]


def test_jpeg_is_the_default_and_quality_changes_the_encoding(client):
    low = client.post("/generate", json={"prompt": "a lighthouse", "seed": 3, "jpeg_quality": 5}).json()
    high = client.post("/generate", json={"prompt": "a lighthouse", "seed": 3, "jpeg_quality": 100}).json()
    assert low["format"] == "jpeg" and low["media_type"] == "image/jpeg"
    assert decode_b64_image(low["images"][0]["data"]).format == "JPEG"
    assert len(base64.b64decode(low["images"][0]["data"])) < len(base64.b64decode(high["images"][0]["data"]))


def test_same_seed_same_images_and_a_missing_seed_is_chosen_and_returned(client):
    request = {"prompt": "a city street at night", "parallel_size": 2, "format": "png"}
    first = client.post("/generate", json={**request, "seed": 99}).json()
    again = client.post("/generate", json={**request, "seed": 99}).json()
    assert [i["data"] for i in first["images"]] == [i["data"] for i in again["images"]]
    chosen = client.post("/generate", json=request).json()
    replay = client.post("/generate", json={**request, "seed": chosen["seed"]}).json()
    assert [i["data"] for i in replay["images"]] == [i["data"] for i in chosen["images"]]


def test_greedy_generation_without_guidance_is_deterministic_without_a_seed(client):
    request = {"prompt": "a cabin in winter", "temperature": 0, "cfg_weight": 1, "format": "png"}
    first = client.post("/generate", json=request).json()
    second = client.post("/generate", json=request).json()
    assert first["images"][0]["data"] == second["images"][0]["data"]


def test_stream_sends_progress_then_the_same_images_as_the_plain_answer(client, tiny_model):
    request = {"prompt": "a happy robot holding a balloon", "parallel_size": 2, "seed": 8, "format": "png"}
    plain = client.post("/generate", json=request).json()
    with client.stream("POST", "/generate", json={**request, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(reply.iter_lines()))
    assert [e.event for e in events[:-2]] == ["progress"] * (len(events) - 2)
    assert [e.event for e in events[-2:]] == ["decoding", "done"]
    steps = [e.data["steps_done"] for e in events[:-2]]
    total = tiny_model.cfg.gen_vision.num_tokens
    assert steps == sorted(steps) and steps[-1] == total and len(steps) >= 2
    assert all(e.data["steps_total"] == total for e in events[:-2])
    assert [i["data"] for i in events[-1].data["images"]] == [i["data"] for i in plain["images"]]


def test_unicode_prompt_generates(client):
    reply = client.post("/generate", json={"prompt": "一只狐狸 🦊 в снегу", "seed": 1})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["images"]) == 1
