"""Generated images are decoded beside the engine loop: over HTTP, other requests are answered while a generation's
images decode, /metrics shows where that generation is, and a decode failure is that request's 500 alone."""

from __future__ import annotations

import numpy as np

from model import reference
from model.chat_template import generation_prompt
from tests.service.helpers import b64, decode_b64_image, image_bytes, plain_decode, post_in_background, wait_until

GENERATE = {"prompt": "a red fox in the snow", "parallel_size": 2, "seed": 21, "format": "png"}
UNDERSTAND = {"question": "What is it?", "images": [b64(image_bytes(seed=5))], "max_new_tokens": 6}


def test_understanding_is_answered_while_a_generations_images_decode(make_server, tiny_model, tiny_tokenizer):
    live = make_server(max_rows=8)
    with live.client() as http:
        alone = http.post("/understand", json=UNDERSTAND).json()["text"]
    gate = live.decode_gate()
    generation, generated = post_in_background(live, "/generate", GENERATE)
    wait_until(gate.entered.is_set, "the generation's images to start decoding")
    with live.client() as http:
        answer = http.post("/understand", json=UNDERSTAND)
        metrics = http.get("/metrics").text
    assert answer.status_code == 200 and answer.json()["text"] == alone
    assert generation.is_alive() and "reply" not in generated  # the decoder is still held
    assert "janus_image_decode_requests 1.0" in metrics
    assert 'janus_running_rows{kind="generate"} 0.0' in metrics
    gate.release()
    generation.join(60)
    reply = generated["reply"]
    assert reply.status_code == 200, reply.text
    ids = np.array(tiny_tokenizer.encode(generation_prompt(GENERATE["prompt"], "deepseek").text))
    tokens = reference.generate(tiny_model, ids, tiny_tokenizer.pad_id, parallel_size=2, cfg_weight=5.0,
                                temperature=1.0, seed=21)
    expected = plain_decode(live.runtime.engine, tokens)
    got = [np.asarray(decode_b64_image(image["data"])) for image in reply.json()["images"]]
    np.testing.assert_array_equal(np.stack(got), expected)
    assert live.runtime.engine.stats()["decoding"] == 0


def test_a_failed_image_decode_answers_500_and_counts_as_a_model_failure(make_server):
    live = make_server(max_rows=8)
    calls: list[int] = []

    def first_call_fails(tokens: np.ndarray) -> bool:
        calls.append(len(tokens))
        return len(calls) == 1

    live.decode_gate(fails=first_call_fails).release()
    with live.client() as http:
        failed = http.post("/generate", json=GENERATE)
        served = http.post("/generate", json=GENERATE)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "model_error"
    assert "image decoding failed" in failed.json()["error"]["message"]
    assert served.status_code == 200 and len(served.json()["images"]) == 2
    assert live.metric("janus_engine_failures_total", kind="model") == 1
    assert calls == [1, 1, 1]  # one image per call: the failed request stopped at its first
