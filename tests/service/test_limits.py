"""What the server promises (GET /info, the documentation) it can serve; what it refuses says which setting to raise.

A request that could only time out in the queue is refused at once with a usable Retry-After.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image

from model.chat_template import get_template
from model.image_processing import ImageProcessor
from service.api.docs import understand_body
from service.engine.capacity import Capacity, KVPool, MiB
from service.processing import (
    MAX_IMAGES,
    MIN_ANSWER_TOKENS,
    AnswerOptions,
    InputError,
    Preprocessor,
    question_conversation,
)
from service.settings import Settings
from tests.service.helpers import b64, image_bytes, rows_held_by_a_generation

PUBLISHED_IMAGE_TOKENS = 576  # Janus-Pro: positions per input image, image tokens per generated image


def _understand(client, count: int, **extra):
    tags = "".join("<image_placeholder>" for _ in range(count)) if count > 1 else ""
    return client.post("/understand", json={"question": f"{tags}What do these show?",
                                            "max_new_tokens": MIN_ANSWER_TOKENS,
                                            "images": [b64(image_bytes(seed=i)) for i in range(count)], **extra})


def test_info_promises_only_as_many_images_as_fit_the_context(make_server):
    live = make_server(max_seq_len=200)
    with live.client() as http:
        promised = http.get("/info").json()["limits"]["max_images"]
        assert 1 <= promised < MAX_IMAGES
        assert _understand(http, promised).status_code == 200
        refused = _understand(http, promised + 1)
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "raise JANUS_MAX_SEQ_LEN to at least" in message and "the server's context is 200 tokens" in message


def test_info_promises_only_the_parallel_size_the_rows_allow(make_server):
    live = make_server(max_rows=6)
    with live.client() as http:
        promised = http.get("/info").json()["limits"]["max_parallel_size"]
        assert promised == 3
        ok = http.post("/generate", json={"prompt": "a fox", "parallel_size": promised, "format": "png"})
        refused = http.post("/generate", json={"prompt": "a fox", "parallel_size": promised + 1})
        unguided = http.post("/generate", json={"prompt": "a fox", "parallel_size": 6, "cfg_weight": 1})
    assert ok.status_code == 200 and unguided.status_code == 200, (ok.text, unguided.text)
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert f"raise JANUS_MAX_ROWS to at least {2 * (promised + 1)}" in message
    assert "lower parallel_size" in message and "cfg_weight 1" in message


PUBLISHED_CONTEXT = 16384  # Janus-Pro's max_position_embeddings: the default JANUS_MAX_SEQ_LEN
# Janus-Pro-1B's KV block in float32 (the CPU): 2 (keys, values) x 24 layers x 16 heads x 128 x 16 positions x 4 B
PUBLISHED_BLOCK_BYTES = 2 * 24 * 16 * 128 * 16 * 4


@pytest.fixture(scope="module")
def published(tiny_dir, tiny_tokenizer) -> Preprocessor:
    """The published sizes (576 positions per image, Janus-Pro-1B's context and KV block) with the default
    settings' rows and KV budget, as the engine sizes its pool."""
    defaults = Settings.model_construct()
    blocks = min(defaults.kv_cache_mb * MiB // PUBLISHED_BLOCK_BYTES,
                 defaults.max_rows * PUBLISHED_CONTEXT // defaults.kv_block_size)
    pool = KVPool(blocks, defaults.kv_block_size, PUBLISHED_BLOCK_BYTES)
    return Preprocessor(tiny_tokenizer, ImageProcessor.from_dir(tiny_dir), get_template("deepseek"),
                        PUBLISHED_IMAGE_TOKENS, PUBLISHED_IMAGE_TOKENS,
                        Capacity(PUBLISHED_CONTEXT, defaults.max_rows, pool))


def test_with_the_defaults_eight_published_images_fit_in_one_question(published):
    assert published.max_images() == MAX_IMAGES
    pictures = [Image.new("RGB", (40, 30), (200, 10, 10 * i)) for i in range(MAX_IMAGES)]
    params = published.understand("<image_placeholder>" * MAX_IMAGES + " Which?", pictures, system_prompt=None,
                                  max_new_tokens=None, temperature=0.0, top_p=1.0, seed=0, timeout_s=None)
    assert params.max_len > MAX_IMAGES * PUBLISHED_IMAGE_TOKENS


def test_with_the_defaults_the_largest_generation_fits(published):
    assert published.max_parallel_size(16) == 16
    params = published.generate("a lighthouse at dusk", parallel_size=16, cfg_weight=5.0, temperature=1.0, seed=0,
                                timeout_s=None)
    assert params.rows <= 32


def test_an_answer_longer_than_the_kv_pool_names_the_setting(published):
    picture = Image.new("RGB", (40, 30), (200, 10, 10))
    with pytest.raises(InputError, match="needs up to .* MiB of KV cache.*raise JANUS_KV_CACHE_MB to at least"):
        # two answers of up to 15,000 tokens: within the context, but not the pool (two rows of ~15,600 positions)
        published.chat(question_conversation("What is it?", 1), [picture], AnswerOptions(max_new_tokens=15000, n=2),
                       None)


def test_an_explicit_answer_length_that_does_not_fit_the_context_names_the_setting(published):
    picture = Image.new("RGB", (40, 30), (200, 10, 10))
    with pytest.raises(InputError, match="lower max_new_tokens to at most .*raise JANUS_MAX_SEQ_LEN"):
        published.understand("What is it?", [picture], system_prompt=None, max_new_tokens=PUBLISHED_CONTEXT,
                              temperature=0.0, top_p=1.0, seed=0, timeout_s=None)


def test_a_documented_example_that_needs_more_than_the_defaults_says_so(published):
    examples = understand_body()["requestBody"]["content"]["application/json"]["examples"]
    for name, example in examples.items():
        if len(example["value"]["images"]) > published.max_images():
            assert "JANUS_MAX_SEQ_LEN" in example.get("summary", ""), name


def test_a_request_that_could_only_time_out_in_the_queue_is_refused_at_once(make_server):
    timeout_s = 20.0
    live = make_server(max_rows=2, max_waiting=8, request_timeout_s=timeout_s)
    out: dict = {}

    def first() -> None:
        with live.client() as http:
            out["reply"] = http.post("/generate", json={"prompt": "a fox", "format": "png"})  # both rows

    with rows_held_by_a_generation(live, first, timeout_s), live.client() as http:
        started = time.monotonic()
        refused = http.post("/generate", json={"prompt": "a cat", "parallel_size": 1})
        quick = http.post("/understand", json={"question": "What?", "images": [b64(image_bytes())],
                                               "max_new_tokens": 2})
        waited = time.monotonic() - started
    for reply in (refused, quick):
        assert reply.status_code == 429, reply.text
        assert "time limit" in reply.json()["error"]["message"]
        assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert waited < timeout_s  # refused at once rather than left to time out (a bound, not a timing claim)
    assert out["reply"].status_code == 200
    assert live.runtime.engine.stats()["waiting"] == 0
