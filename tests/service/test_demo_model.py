"""The built-in demo model through a real server: it is what a server without a model folder serves, it says what
it is everywhere, and it draws and names the colours and shapes asked about (judged by `training.judge`, numpy and
Pillow; a small sample of bench.demo_quality's table, on pictures and seeds the training never saw)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI
from PIL import Image

from model.demo import demo_model_dir
from service.runtime import default_model_dir
from tests.service.helpers import start_server, test_settings
from training.judge import judge
from training.probes import PROBE_COLOURS, PROBE_SHAPES, probes
from training.scenes import article

DESCRIPTION = "a small demo model trained on synthetic shapes, not Janus-Pro"


@pytest.fixture(scope="module")
def demo():
    live = start_server(test_settings(demo_model_dir(), max_seq_len=1024, max_rows=32))
    yield live
    live.stop()


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_server_without_a_model_folder_serves_the_demo_model():
    assert default_model_dir() == demo_model_dir()


def test_says_what_it_is_in_info_and_on_every_response(demo):
    with demo.client() as http:
        info = http.get("/info")
        assert info.json()["description"] == DESCRIPTION and info.json()["random_weights"] is False
        assert info.json()["examples"]["prompts"] and info.json()["examples"]["questions"]
        for reply in (info, http.get("/health"), http.post("/generate", json={"prompt": ""})):
            assert reply.headers["x-model-description"] == DESCRIPTION
            assert reply.headers["x-random-weights"] == "false"


def test_draws_the_colour_and_shape_asked_for(demo):
    asks = [(colour, shape) for colour in PROBE_COLOURS for shape in PROBE_SHAPES]

    def draw(ask: tuple[str, str]) -> Image.Image:
        colour, shape = ask
        with demo.client(timeout=300) as http:
            reply = http.post("/generate", json={"prompt": f"{article(colour)} {colour} {shape}", "seed": 2026,
                                                 "cfg_weight": 5, "temperature": 1, "format": "png"})
        assert reply.status_code == 200, reply.text
        return Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]["data"])))

    with ThreadPoolExecutor(len(asks)) as pool:  # all in flight together: the engine batches them
        verdicts = [judge(picture) for picture in pool.map(draw, asks)]
    colours = sum(v.colour == colour for v, (colour, _) in zip(verdicts, asks, strict=True))
    shapes = sum(v.shape == shape for v, (_, shape) in zip(verdicts, asks, strict=True))
    # one seed per prompt, all in one batch; bench.demo_quality has the full table (24 seeds per prompt: colour
    # 99%, shape 88% at this guidance). The goals: colour 90%, shape 80% (16 and 14 of 18; the previous checkpoint,
    # at 58% shape, drew 11 here). Chance would be 3 colours and 6 shapes of 18.
    assert colours >= 16 and shapes >= 14, (colours, shapes, verdicts)


def test_names_the_colour_and_shape_of_pictures_it_never_saw(demo):
    pictures = probes(1, seed=2026)
    client = OpenAI(base_url=f"{demo.url}/v1", api_key="unused")

    def ask(picture: Image.Image, question: str) -> str:
        chat = client.chat.completions.create(model="demo", max_tokens=24, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png(picture)}},
            {"type": "text", "text": question}]}])
        return (chat.choices[0].message.content or "").lower()

    with ThreadPoolExecutor(8) as pool:
        described = list(pool.map(lambda p: ask(p.picture, "What is in this picture?"), pictures))
        shaped = list(pool.map(lambda p: ask(p.picture, "What shape is it?"), pictures))
    colours = sum(p.colour in text for p, text in zip(pictures, described, strict=True))
    shapes = sum(p.shape in text for p, text in zip(pictures, described, strict=True))
    asked = sum(p.shape in text for p, text in zip(pictures, shaped, strict=True))
    # bench.demo_quality on 72 such pictures: colour 100%, shape 88% described and 93% asked (chance: a third);
    # the goals: colour 90%, shape 85% (16 and 15 of 18)
    assert colours >= 16, (colours, described)
    assert shapes >= 15 and asked >= 15, (shapes, asked, described, shaped)
