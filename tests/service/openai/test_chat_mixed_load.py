"""Chat completions, native understanding and generation requests share engine steps, and each still gives exactly
what it gives alone."""

from __future__ import annotations

import pytest

from tests.service.helpers import b64, image_bytes, run_in_one_batch

IMAGE_URL = "data:image/png;base64," + b64(image_bytes(seed=5))
REQUESTS = [
    ("/v1/chat/completions", {"model": "janus", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}},
                                     {"type": "text", "text": "What is it?"}]}]}),
    ("/generate", {"prompt": "a red fox", "parallel_size": 2, "seed": 4, "format": "png"}),
    ("/understand", {"question": "How many cats?", "images": [b64(image_bytes(seed=2))], "max_new_tokens": 12,
                     "temperature": 0.9, "top_p": 0.8, "seed": 7}),
    ("/v1/chat/completions", {"model": "janus", "max_tokens": 12, "n": 2, "temperature": 1.1, "seed": 8,
                              "stop": ["e t"], "logprobs": True, "top_logprobs": 2, "messages": [
                                  {"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Tell me about foxes."},
                                  {"role": "assistant", "content": "They are red."},
                                  {"role": "user", "content": "And wolves?"}]}),
    ("/generate", {"prompt": "a harbour at sunset", "parallel_size": 1, "cfg_weight": 1.0, "seed": 5,
                   "format": "png"}),
    ("/understand", {"question": "Why is the sky blue?", "max_new_tokens": 8}),
]


def _essence(path: str, body: dict) -> object:
    if path == "/understand":
        return body["text"]
    if path == "/generate":
        return [image["data"] for image in body["images"]]
    # the second time around the prompt comes from the prefix cache: the same usage but for cached_tokens
    usage = {k: v for k, v in body["usage"].items() if k != "prompt_tokens_details"}
    return [(c["message"]["content"], c["finish_reason"], _tokens(c["logprobs"])) for c in body["choices"]], usage


def _tokens(logprobs: dict | None) -> list | None:
    """The chosen and the top tokens, exactly; their log-probabilities are compared apart (batched matrix products
    add in another order, a few ulps apart)."""
    if logprobs is None:
        return None
    return [(e["token"], [t["token"] for t in e["top_logprobs"]]) for e in logprobs["content"]]


def _logprobs(body: dict) -> list[float]:
    return [v for c in body.get("choices", []) if c["logprobs"]
            for e in c["logprobs"]["content"] for v in [e["logprob"], *(t["logprob"] for t in e["top_logprobs"])]]


def test_chat_understanding_and_generation_share_steps_and_give_their_solo_results(make_server):
    live = make_server(max_rows=16)
    with live.client() as http:
        solo, solo_logprobs = [], []
        for path, payload in REQUESTS:
            reply = http.post(path, json=payload)
            assert reply.status_code == 200, reply.text
            solo.append(_essence(path, reply.json()))
            solo_logprobs += _logprobs(reply.json())
    replies, steps = run_in_one_batch(live, REQUESTS)
    together, together_logprobs = [], []
    for (path, _), reply in zip(REQUESTS, replies, strict=True):
        assert reply.status_code == 200, reply.text
        together.append(_essence(path, reply.json()))
        together_logprobs += _logprobs(reply.json())
    assert together == solo
    assert together_logprobs == pytest.approx(solo_logprobs, abs=1e-4)
    # They really shared steps: a step ran the chat's rows beside understanding and generation rows.
    assert any(s["running_understand_rows"] >= 4 and s["running_generate_rows"] for s in steps)
