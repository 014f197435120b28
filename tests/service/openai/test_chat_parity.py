"""A chat's prompt ids against transformers' Janus processor (the oracle): the conversation written out as the
reference chat template writes it, then transformers' processor (default system prompt, image expansion, its own
tokenizer over the checkpoint's tokenizer.json)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from model.special_tokens import EOS_TOKEN
from service.api.openai.chat_messages import read_messages
from service.api.openai.chat_protocol import ChatCompletionRequest
from service.processing import AnswerOptions, Preprocessor
from tests.oracle.client import oracle_python, run_oracle

pytestmark = pytest.mark.parity

U, A, IMG = "<|User|>", "<|Assistant|>", "<image_placeholder>"
PICTURE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}

CONVERSATIONS = {
    "several turns, images in two": (
        [{"role": "user", "content": [PICTURE, {"type": "text", "text": "Describe the first picture."}]},
         {"role": "assistant", "content": "A red car on a road."},
         {"role": "user", "content": [{"type": "text", "text": "Now compare it with"}, PICTURE,
                                      {"type": "text", "text": "and"}, PICTURE, {"type": "text", "text": "please."}]},
         {"role": "assistant", "content": "The second is darker; the third is blurred."},
         {"role": "user", "content": "Which one would you keep?"}],
        f"{U}: {IMG}\nDescribe the first picture.\n\n{A}: A red car on a road.{EOS_TOKEN}"
        f"{U}: Now compare it with\n{IMG}\nand\n{IMG}\nplease.\n\n{A}: The second is darker; the third is blurred."
        f"{EOS_TOKEN}{U}: Which one would you keep?\n\n{A}:", 3),
    "text only": (
        [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi. How can I help?"},
         {"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "a joke."}]}],
        f"{U}: Hello!\n\n{A}: Hi. How can I help?{EOS_TOKEN}{U}: Tell me a joke.\n\n{A}:", 0),
}


@pytest.fixture(scope="module")
def prep(tiny_dir, tiny_model) -> Preprocessor:
    return Preprocessor.from_dir(tiny_dir, tiny_model.cfg, max_seq_len=4096)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_prompt_ids_equal_the_reference_processors(name, prep, tiny_dir, tiny_model):
    if oracle_python() is None:
        if os.environ.get("JANUS_REQUIRE_ORACLE") == "1":
            pytest.fail("the oracle venv is required here but missing (tests/oracle/setup_venv.sh)")
        pytest.skip("oracle venv not set up (tests/oracle/setup_venv.sh)")
    messages, written, images = CONVERSATIONS[name]
    chat = read_messages(ChatCompletionRequest.model_validate({"messages": messages}).messages)
    assert len(chat.images) == images
    pictures = [Image.new("RGB", (32, 32))] * images
    ours = prep.chat(chat.conversation, pictures, AnswerOptions(max_new_tokens=1), timeout_s=None).prompt_ids
    expected = run_oracle(tiny_dir, {"chat_text": np.frombuffer(written.encode(), np.uint8),
                                     "chat_num_images": np.int64(images),
                                     "chat_num_image_tokens": np.int64(tiny_model.cfg.vision.num_tokens)})
    assert ours == expected["chat_input_ids"].tolist()
