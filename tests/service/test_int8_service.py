"""JANUS_QUANTIZATION=int8: the setting and its flag, /info, and a live server holding int8 weights answering the
native and the OpenAI routes with what the plain reference loops (PaddleNLP's own layers) compute on its weights
dequantized to float32."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import paddle
import pytest
from PIL import Image
from pydantic import ValidationError

from model import reference
from model.chat_template import (
    DEFAULT_SYSTEM_PROMPT,
    expand_image_ids,
    generation_prompt,
    place_images,
    understanding_prompt,
)
from model.checkpoint import keys
from model.checkpoint.loader import load_janus
from model.cpu_kernels import int8
from model.image_processing import ImageProcessor
from service.cli import load_settings
from service.settings import Settings
from tests.service.helpers import b64, image_bytes

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def int8_model(tiny_dir):
    """The tiny checkpoint in float32 with the weights the server holds as int8 replaced by their dequantized
    values: what the server's int8 products compute (to float32 rounding)."""
    paddle.set_grad_enabled(False)
    quantized, report = load_janus(tiny_dir, cache_dir=False, quantization="int8")
    assert report.quantization == "int8"
    model, _ = load_janus(tiny_dir, cache_dir=False)
    layers, params = dict(quantized.named_sublayers()), dict(model.named_parameters())
    for name in keys.int8_names(quantized):
        layer = layers[name.rpartition(".")[0]]
        params[name].set_value(int8.dequantize(int8.unpair_rows(layer.weight.numpy()), layer.weight_scale.numpy(),
                                               layer.int8_group))
    return model


@pytest.fixture(scope="module")
def int8_server(tiny_dir, tmp_path_factory):
    from tests.service.helpers import start_server, test_settings

    live = start_server(test_settings(tiny_dir, quantization="int8"))
    yield live
    live.stop()


def _reference_text(model, tokenizer, directory, question: str, picture: bytes, max_new_tokens: int) -> str:
    text = understanding_prompt(place_images(question), "deepseek", DEFAULT_SYSTEM_PROMPT, num_images=1).text
    ids = expand_image_ids(tokenizer.encode(text), tokenizer.image_id, tokenizer.boi_id, tokenizer.eoi_id,
                           model.cfg.vision.num_tokens)
    pixels = ImageProcessor.from_dir(directory)([Image.open(io.BytesIO(picture))])
    new = reference.understand(model, np.array(ids), pixels, tokenizer.image_id, tokenizer.eos_id, max_new_tokens)
    if new and new[-1] == tokenizer.eos_id:
        new = new[:-1]
    return tokenizer.decode(new)


def _reference_images(model, tokenizer, n: int, seed: int) -> np.ndarray:
    ids = np.array(tokenizer.encode(generation_prompt(PROMPT, "deepseek").text))
    tokens = reference.generate(model, ids, tokenizer.pad_id, parallel_size=n, cfg_weight=5.0, temperature=1.0,
                                seed=seed)
    return model.decode_images(paddle.to_tensor(tokens))


def _pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_info_and_the_native_routes_with_int8_weights(int8_server, int8_model, tiny_tokenizer, tiny_dir):
    picture = image_bytes((64, 48), seed=3)
    with int8_server.client() as http:
        info = http.get("/info").json()
        assert (info["quantization"], info["dtype"]) == ("int8", "float32")
        answer = http.post("/understand", json={"question": "What is in the picture?", "images": [b64(picture)],
                                                 "max_new_tokens": 10})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == _reference_text(int8_model, tiny_tokenizer, tiny_dir,
                                                        "What is in the picture?", picture, 10)
        drawn = http.post("/generate", json={"prompt": PROMPT, "parallel_size": 2, "seed": 7, "format": "png"})
        assert drawn.status_code == 200, drawn.text
    expected = _reference_images(int8_model, tiny_tokenizer, 2, seed=7)
    for index, image in enumerate(drawn.json()["images"]):
        np.testing.assert_array_equal(_pixels(image["data"]), expected[index])


def test_openai_routes_with_int8_weights(int8_server, int8_model, tiny_tokenizer, tiny_dir):
    client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key="unused", max_retries=0)
    picture = image_bytes((64, 48), seed=4)
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(picture)}},
               {"type": "text", "text": "Describe it."}]
    chat = client.chat.completions.create(model="janus", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": content}])
    assert chat.choices[0].message.content == _reference_text(int8_model, tiny_tokenizer, tiny_dir, "Describe it.",
                                                               picture, 8)
    images = client.images.generate(prompt=PROMPT, n=1, output_format="png", extra_body={"seed": 9})
    np.testing.assert_array_equal(_pixels(images.data[0].b64_json), _reference_images(int8_model, tiny_tokenizer, 1,
                                                                                      seed=9)[0])


def test_a_server_without_quantization_says_none(client):
    assert client.get("/info").json()["quantization"] == "none"


def test_quantization_comes_from_the_environment_or_the_flag(monkeypatch, tiny_dir):
    monkeypatch.setenv("JANUS_QUANTIZATION", "int8")
    assert Settings(model_dir=tiny_dir).quantization == "int8"
    monkeypatch.delenv("JANUS_QUANTIZATION")
    assert Settings(model_dir=tiny_dir).quantization == "none"
    assert load_settings(["--model-dir", str(tiny_dir), "--quantization", "int8"]).quantization == "int8"


@pytest.mark.parametrize(("values", "message"), [
    ({"quantization": "int4"}, "'none' or 'int8'"),
    ({"quantization": "int8", "device": "gpu", "dtype": "float32"}, "float16 or bfloat16 activations"),
])
def test_unsupported_quantization_settings_are_refused_with_what_to_change(tiny_dir, values, message):
    with pytest.raises(ValidationError, match=message):
        Settings(model_dir=tiny_dir, **values)
