"""Speculative decoding through the API: the server setting and the per-request override on /generate and
/v1/images/generations, forward counts in the response, acceptance and tokens per forward in /metrics."""

from __future__ import annotations

import openai
import pytest

from service.cli import load_settings
from service.settings import Settings
from tests.service.helpers import test_settings

PROMPT = {"prompt": "a red fox in the snow", "parallel_size": 2, "seed": 7, "format": "png"}


def _draft_metrics(live) -> tuple[float, float]:
    return (live.metric("janus_speculative_draft_tokens_total", result="accepted"),
            live.metric("janus_speculative_draft_tokens_total", result="rejected"))


def test_a_request_asks_for_speculative_decoding_on_a_server_without_it(make_server, tiny_model):
    live = make_server(max_rows=32, speculative_window=3)
    steps = tiny_model.cfg.gen_vision.num_tokens
    with live.client() as http:
        plain = http.post("/generate", json={**PROMPT, "temperature": 0}).json()
        assert plain["timings"]["forward_passes"] == steps  # the prefill draws the first token
        assert _draft_metrics(live) == (0.0, 0.0)
        fast = http.post("/generate", json={**PROMPT, "temperature": 0, "speculative": True}).json()
    assert [i["data"] for i in fast["images"]] == [i["data"] for i in plain["images"]]  # greedy: the same tokens
    accepted, rejected = _draft_metrics(live)
    assert accepted + rejected > 0
    forwards = live.metric("janus_speculative_image_forwards_total")
    kept = live.metric("janus_speculative_image_tokens_total")
    assert kept == forwards + accepted  # each image and step keeps its accepted drafts and one token more
    # the prefill, then a step per window of the slower image (both images take part in most steps)
    assert 1 + forwards / 2 <= fast["timings"]["forward_passes"] <= min(1 + forwards, steps)
    assert live.metric("janus_speculative_acceptance_rate") == pytest.approx(accepted / (accepted + rejected))
    assert live.metric("janus_speculative_tokens_per_forward") == pytest.approx(kept / forwards)


def test_a_server_that_decodes_speculatively_lets_a_request_refuse(make_server, tiny_model):
    live = make_server(speculative="jacobi", speculative_window=4)
    steps = tiny_model.cfg.gen_vision.num_tokens
    with live.client() as http:
        plain = http.post("/generate", json={**PROMPT, "speculative": False}).json()
        assert plain["timings"]["forward_passes"] == steps and _draft_metrics(live) == (0.0, 0.0)
        default = http.post("/generate", json=PROMPT).json()
        again = http.post("/generate", json=PROMPT).json()
        wrong = http.post("/generate", json={**PROMPT, "speculative": "sometimes"})
    assert sum(_draft_metrics(live)) > 0
    assert [i["data"] for i in default["images"]] == [i["data"] for i in again["images"]]  # a seed still decides
    assert wrong.status_code == 422 and "speculative" in wrong.text


def test_v1_images_take_the_override_in_extra_body(make_server):
    live = make_server()
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    body = {"seed": 3, "temperature": 0}
    plain = client.images.generate(prompt="a lighthouse", n=2, extra_body=body)
    fast = client.images.generate(prompt="a lighthouse", n=2, extra_body={**body, "speculative": True})
    assert [d.b64_json for d in fast.data] == [d.b64_json for d in plain.data]
    assert sum(_draft_metrics(live)) > 0


def test_settings_from_the_environment_and_flags(monkeypatch, tmp_path):
    assert Settings().speculative == "off"
    monkeypatch.setenv("JANUS_SPECULATIVE", "jacobi")
    monkeypatch.setenv("JANUS_SPECULATIVE_WINDOW", "6")
    assert (Settings().speculative, Settings().speculative_window) == ("jacobi", 6)
    settings = load_settings(["--speculative", "off", "--speculative-window", "8"])
    assert (settings.speculative, settings.speculative_window) == ("off", 8)
    with pytest.raises(ValueError, match="speculative"):
        test_settings(tmp_path, speculative="medusa")
    with pytest.raises(ValueError, match="speculative_window"):
        test_settings(tmp_path, speculative_window=0)
