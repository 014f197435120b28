"""A checkpoint that says what it is (config.json `description`, as the built-in demo model's does) and which
prompts and questions suit it (playground.json): the server repeats both, in /info, on every response, and when
no model folder is given it serves the built-in demo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.runtime import default_model_dir, playground_examples
from tests.service.helpers import start_server, test_settings

DESCRIPTION = "a small test model that says what it is"


@pytest.fixture(scope="module")
def described(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("described")
    shutil.copytree(tiny_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(description=DESCRIPTION, random_weights=False)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "playground.json").write_text(json.dumps({"prompts": ["a red circle"], "questions": ["Why?"]}))
    live = start_server(test_settings(folder))
    yield live
    live.stop()


def test_info_says_what_the_model_is_and_what_to_try(described):
    info = httpx.get(f"{described.url}/info").json()
    assert info["description"] == DESCRIPTION and info["random_weights"] is False
    assert info["examples"] == {"prompts": ["a red circle"], "questions": ["Why?"]}


def test_every_response_carries_the_description(described):
    with described.client() as http:
        for reply in (http.get("/health"), http.get("/info"), http.post("/generate", json={"prompt": ""}),
                      http.get("/no/such/route")):
            assert reply.headers["x-model-description"] == DESCRIPTION, reply.url


def test_a_model_without_a_description_sends_no_such_header(server):
    reply = httpx.get(f"{server.url}/health")
    assert "x-model-description" not in reply.headers
    assert httpx.get(f"{server.url}/info").json()["examples"] == {"prompts": [], "questions": []}


def test_broken_or_missing_suggestions_are_none(tmp_path):
    assert playground_examples(tmp_path) == {"prompts": [], "questions": []}
    (tmp_path / "playground.json").write_text("{not json")
    assert playground_examples(tmp_path) == {"prompts": [], "questions": []}


def test_an_installation_without_the_demo_weights_falls_back_to_random_weights(monkeypatch, tmp_path):
    import model.demo

    monkeypatch.setattr(model.demo, "DEMO_DIR", tmp_path / "missing")
    folder = default_model_dir()
    assert json.loads((folder / "config.json").read_text())["random_weights"] is True
