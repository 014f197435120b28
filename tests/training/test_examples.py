"""Training examples are exactly what the service asks the model: the same prompt ids for a question about one
image and for a generation prompt, built by the service's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.image_processing import ImageProcessor
from model.tokenizer import JanusTokenizer
from model.tokenizer_builder import build_tiny_tokenizer, write_preprocessor_config
from service.engine.capacity import Capacity
from service.processing import Preprocessor
from training.demo_config import demo_config, tokenizer_corpus
from training.examples import Codec, generation_batch, understanding_batch, understanding_example
from training.patch_codebook import PatchCodebook
from training.scenes import random_scene, render


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-tokenizer")
    build_tiny_tokenizer(out, 512, tokenizer_corpus())
    write_preprocessor_config(out, demo_config().vision.image_size)
    return out


@pytest.fixture(scope="module")
def codec(demo_files: Path) -> Codec:
    codebook = PatchCodebook(np.random.default_rng(0).random((16, 8 * 8 * 3), dtype=np.float32), 8, 8)
    return Codec(JanusTokenizer.from_dir(demo_files), ImageProcessor.from_dir(demo_files), codebook, 64)


@pytest.fixture(scope="module")
def preprocessor(demo_files: Path, codec: Codec) -> Preprocessor:
    cfg = demo_config()
    from model.chat_template import DEEPSEEK
    return Preprocessor(codec.tokenizer, codec.processor, DEEPSEEK, cfg.vision.num_tokens, cfg.gen_vision.num_tokens,
                        Capacity(1024, 8))


def test_understanding_prompt_is_the_services(codec, preprocessor):
    picture = Image.new("RGB", (40, 30), "red")
    for system in (True, False):
        served = preprocessor.understand("What shape is it?", [picture], system_prompt=None if system else "",
                                         max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, timeout_s=None)
        assert codec.understanding_ids([], "What shape is it?", system=system) == served.prompt_ids


def test_follow_up_prompt_is_the_services(codec, preprocessor):
    picture = Image.new("RGB", (40, 30), "red")
    served = preprocessor.understand("Where is it?", [picture], system_prompt=None, max_new_tokens=8,
                                     temperature=0.0, top_p=1.0, seed=0, timeout_s=None,
                                     history=[("<image_placeholder>\nWhat shape is it?", "It is a circle.")])
    assert codec.understanding_ids([("What shape is it?", "It is a circle.")], "Where is it?", True) == \
        served.prompt_ids


def test_generation_prompt_and_its_unconditional_twin_are_the_services(codec, preprocessor):
    served = preprocessor.generate("a small blue square in the top left corner", parallel_size=1, cfg_weight=5.0,
                                   temperature=1.0, seed=0, timeout_s=None)
    ids = codec.generation_ids("a small blue square in the top left corner")
    assert ids == served.prompt_ids
    dropped = codec.generation_ids("a small blue square in the top left corner", drop=True)
    assert dropped == [ids[0], *[served.pad_id] * (len(ids) - 2), ids[-1]]


def test_answers_end_the_assistant_turn(codec):
    ids = codec.answer_ids("A red circle on a white background.")
    assert ids[-1] == codec.tokenizer.eos_id
    assert codec.tokenizer.decode(ids) == " A red circle on a white background."


def test_a_training_conversation_has_every_answer_as_a_target(codec):
    rng = np.random.default_rng(4)
    example = next(e for e in (understanding_example(codec, rng) for _ in range(50)) if len(e.answers) == 3)
    tok = codec.tokenizer
    texts = [tok.decode(example.ids[first:end], skip_special_tokens=True).strip() for first, end in example.answers]
    assert all(example.ids[end - 1] == tok.eos_id for _, end in example.answers)
    assert len(texts) == 3 and all(t.startswith(("A", "An", "It", "The")) and t.endswith(".") for t in texts)

    batch = understanding_batch([example])
    flat = np.concatenate([batch.ids.reshape(-1), [example.ids[-1]]])
    # every target is the token that follows its position in the conversation
    assert np.array_equal(flat[batch.target_positions + 1], batch.targets)
    assert len(batch.targets) == sum(end - first for first, end in example.answers)


def test_batches_put_every_target_where_its_input_is(codec):
    rng = np.random.default_rng(1)
    examples = [understanding_example(codec, rng) for _ in range(3)]
    batch = understanding_batch(examples)
    T = batch.ids.shape[1]
    for b, example in enumerate(examples):
        row = batch.target_positions[(batch.target_positions >= b * T) & (batch.target_positions < (b + 1) * T)]
        inputs = np.asarray(example.ids)
        assert np.array_equal(inputs[row - b * T + 1], np.concatenate([inputs[f:e] for f, e in example.answers]))

    from training.examples import GenerationExample
    tokens = [np.arange(64) + 100 * i for i in range(2)]
    generation = generation_batch([GenerationExample([1, 2, 3], tokens[0]), GenerationExample([1, 2, 3, 4, 5],
                                                                                               tokens[1])])
    T = generation.ids.shape[1]
    assert generation.target_positions[0] == 2 and generation.target_positions[64] == T + 4
    assert np.array_equal(generation.image_positions[:63], np.arange(3, 66))
    assert np.array_equal(generation.image_inputs[:63], tokens[0][:63])
    assert np.array_equal(generation.targets, np.concatenate(tokens))


def test_scenes_render_what_they_say(codec):
    from training.judge import judge

    rng = np.random.default_rng(2)
    for _ in range(30):
        scene = random_scene(rng, coloured_background=0.3, jitter_colours=True)
        verdict = judge(render(scene, 96))
        assert (verdict.colour, verdict.shape, verdict.background) == (scene.colour, scene.shape, scene.background)
