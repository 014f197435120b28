"""POST /understand end to end: real uvicorn, real engine, real tiny model."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model import reference
from model.chat_template import DEFAULT_SYSTEM_PROMPT, expand_image_ids, place_images, understanding_prompt
from model.image_processing import ImageProcessor
from tests.service.helpers import b64, image_bytes, sse_events


def _reference_text(tiny_model, tiny_tokenizer, tiny_dir, question, images, max_new_tokens,
                    system_prompt=DEFAULT_SYSTEM_PROMPT) -> str:
    """The answer computed without the service: template, tokenizer, processor and the plain reference loop."""
    tok = tiny_tokenizer
    # the reference's way: the whole prompt string through the tokenizer (the questions here type no special token)
    text = understanding_prompt(place_images(question), "deepseek", system_prompt, num_images=len(images)).text
    ids = expand_image_ids(tok.encode(text), tok.image_id, tok.boi_id, tok.eoi_id, tiny_model.cfg.vision.num_tokens)
    pixels = ImageProcessor.from_dir(tiny_dir)([Image.open(io.BytesIO(data)) for data in images])
    new = reference.understand(tiny_model, np.array(ids), pixels, tok.image_id, tok.eos_id, max_new_tokens)
    if new and new[-1] == tok.eos_id:
        new = new[:-1]
    return tok.decode(new)


def test_json_answer_equals_the_reference_loop(client, tiny_model, tiny_tokenizer, tiny_dir):
    picture = image_bytes(seed=1)
    reply = client.post("/understand", json={"question": "What colour is the car?", "images": [b64(picture)],
                                             "max_new_tokens": 12})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] == _reference_text(tiny_model, tiny_tokenizer, tiny_dir, "What colour is the car?",
                                           [picture], 12)
    assert body["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 12 and body["usage"]["prompt_tokens"] > 16
    assert body["random_weights"] is True and reply.headers["x-random-weights"] == "true"
    assert reply.headers["x-request-id"] == body["id"]
    assert set(body["timings"]) == {"queued_s", "prefill_s", "decode_s", "total_s"}


def test_custom_system_prompt_changes_the_prompt_like_the_reference(client, tiny_model, tiny_tokenizer, tiny_dir):
    picture = image_bytes(seed=2)
    reply = client.post("/understand", json={"question": "Describe the photo.", "images": [b64(picture)],
                                             "system_prompt": "", "max_new_tokens": 10})
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == _reference_text(tiny_model, tiny_tokenizer, tiny_dir, "Describe the photo.",
                                                   [picture], 10, system_prompt="")


def test_multipart_upload_gives_the_same_answer_as_json(client):
    picture = image_bytes(seed=3, fmt="JPEG")
    options = {"question": "How many cats are in the picture?", "max_new_tokens": 10, "temperature": 0.7,
               "top_p": 0.9, "seed": 11}
    as_json = client.post("/understand", json={**options, "images": [b64(picture)]})
    as_form = client.post("/understand", data={k: str(v) for k, v in options.items()},
                          files={"image": ("cat.jpg", picture, "image/jpeg")})
    assert as_json.status_code == 200 and as_form.status_code == 200, (as_json.text, as_form.text)
    assert as_form.json()["text"] == as_json.json()["text"]
    assert as_form.json()["seed"] == 11


def test_stream_deltas_add_up_to_the_final_text_and_match_the_plain_answer(client):
    request = {"question": "Is it day or night?", "images": [b64(image_bytes(seed=4))], "max_new_tokens": 16,
               "temperature": 1.0, "seed": 5}
    plain = client.post("/understand", json=request).json()
    with client.stream("POST", "/understand", json={**request, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(reply.iter_lines()))
    kinds = [e.event for e in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"delta"}
    done = events[-1].data
    assert "".join(e.data["text"] for e in events[:-1]) == done["text"] == plain["text"]
    assert done["usage"] == plain["usage"] and done["random_weights"] is True


def test_same_seed_gives_the_same_sampled_answer_and_a_missing_seed_is_chosen_and_returned(client):
    request = {"question": "What is on the desk?", "images": [b64(image_bytes(seed=6))], "max_new_tokens": 16,
               "temperature": 1.0}
    first = client.post("/understand", json={**request, "seed": 123}).json()
    again = client.post("/understand", json={**request, "seed": 123}).json()
    assert first["text"] == again["text"] and first["seed"] == 123
    chosen = client.post("/understand", json=request).json()
    replay = client.post("/understand", json={**request, "seed": chosen["seed"]}).json()
    assert replay["text"] == chosen["text"]


def test_several_images_are_placed_by_their_tags(client):
    images = [b64(image_bytes(seed=s)) for s in (7, 8)]
    reply = client.post("/understand", json={
        "question": "First <image_placeholder> then <image_placeholder>: which is brighter?", "images": images,
        "max_new_tokens": 4})
    assert reply.status_code == 200, reply.text
    # two images of 16 positions each, each wrapped in <begin_of_image> ... <end_of_image>
    single = client.post("/understand", json={"question": "First <image_placeholder>: which is brighter?",
                                              "images": images[:1], "max_new_tokens": 4})
    assert reply.json()["usage"]["prompt_tokens"] - single.json()["usage"]["prompt_tokens"] >= 18


def test_unicode_question_is_answered(client):
    reply = client.post("/understand", json={"question": "这是什么？ Что это? 🦊 ¿Qué es?",
                                             "images": [b64(image_bytes(seed=9))], "max_new_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["text"], str)


def test_a_data_url_image_is_accepted(client):
    url = "data:image/png;base64," + b64(image_bytes(seed=10))
    reply = client.post("/understand", json={"question": "Describe it.", "images": [url], "max_new_tokens": 2})
    assert reply.status_code == 200, reply.text


def _reference_answer(tiny_model, tiny_tokenizer, tiny_dir, prompt: str, images: list[bytes], max_new_tokens: int):
    """The reference loop on a prompt written out by hand (tokenized as trusted text: its tags are the tokens)."""
    tok = tiny_tokenizer
    ids = expand_image_ids(tok.encode(prompt), tok.image_id, tok.boi_id, tok.eoi_id, tiny_model.cfg.vision.num_tokens)
    pixels = ImageProcessor.from_dir(tiny_dir)([Image.open(io.BytesIO(d)) for d in images]) if images else None
    new = reference.understand(tiny_model, np.array(ids), pixels, tok.image_id, tok.eos_id, max_new_tokens)
    return tok.decode(new[:-1] if new and new[-1] == tok.eos_id else new), len(ids)


def test_a_text_only_question_is_answered_like_the_reference(client, tiny_model, tiny_tokenizer, tiny_dir):
    reply = client.post("/understand", json={"question": "Why is the sky blue?", "max_new_tokens": 10})
    assert reply.status_code == 200, reply.text
    prompt = f"{DEFAULT_SYSTEM_PROMPT}\n\n<|User|>: Why is the sky blue?\n\n<|Assistant|>:"
    text, prompt_tokens = _reference_answer(tiny_model, tiny_tokenizer, tiny_dir, prompt, [], 10)
    assert reply.json()["text"] == text and reply.json()["usage"]["prompt_tokens"] == prompt_tokens
    form = client.post("/understand/upload", files={"question": (None, "Why is the sky blue?"),
                                                    "max_new_tokens": (None, "10")})
    assert form.status_code == 200 and form.json()["text"] == text


def test_history_continues_a_conversation_with_images_in_earlier_questions(client, tiny_model, tiny_tokenizer,
                                                                           tiny_dir):
    first, second = image_bytes(seed=12), image_bytes(seed=13)
    reply = client.post("/understand", json={
        "history": [{"question": "<image_placeholder> What is this?", "answer": "A noisy square."},
                    {"question": "And <image_placeholder>?", "answer": "Another one."}],
        "question": "Which is brighter?", "images": [b64(first), b64(second)], "system_prompt": "Be brief.",
        "max_new_tokens": 9})
    assert reply.status_code == 200, reply.text
    eos = tiny_tokenizer.eos_token
    prompt = ("Be brief.\n\n<|User|>: <image_placeholder> What is this?\n\n<|Assistant|>: A noisy square." + eos +
              "<|User|>: And <image_placeholder>?\n\n<|Assistant|>: Another one." + eos +
              "<|User|>: Which is brighter?\n\n<|Assistant|>:")
    text, prompt_tokens = _reference_answer(tiny_model, tiny_tokenizer, tiny_dir, prompt, [first, second], 9)
    assert reply.json()["text"] == text and reply.json()["usage"]["prompt_tokens"] == prompt_tokens


def test_history_tags_must_match_the_images(client):
    reply = client.post("/understand", json={"history": [{"question": "<image_placeholder> What?", "answer": "X"}],
                                             "question": "<image_placeholder> And this?",
                                             "images": [b64(image_bytes(seed=14))]})
    assert reply.status_code == 422 and "2 <image_placeholder> tag(s) but 1 image" in reply.text
