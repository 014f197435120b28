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


def test_a_twin_is_fed_what_its_conditional_row_is_fed_noise_included_with_the_prompt_dropped(codec):
    from training.examples import generation_examples

    rng = np.random.default_rng(3)
    scenes = [random_scene(rng) for _ in range(8)]
    tokens = rng.integers(16, size=(8, 64))
    examples = generation_examples(codec, scenes, tokens, rng, 0.25)
    assert [e.twin for e in examples] == [None] * 8 + [0, 1]  # a quarter of the pictures again
    batch = generation_batch(examples, rng, noise=0.5, vocabulary=16)
    assert batch.twins.tolist() == [[0, 8], [1, 9]]
    fed = batch.image_inputs.reshape(10, 63)
    for conditional, twin in batch.twins:
        assert np.array_equal(fed[conditional], fed[twin])
        assert (fed[twin] != tokens[conditional][:63]).sum() > 10  # noised, and the same noise
        assert np.array_equal(batch.targets.reshape(10, 64)[twin], tokens[conditional])
    assert (fed[2] != fed[3]).any() and (fed[5] != tokens[5][:63]).sum() > 10  # other rows noised on their own
    pad = codec.tokenizer.pad_id
    for conditional, twin in batch.twins:  # the engine's unconditional row: BOS, padding, <begin_of_image>
        prompt = examples[conditional].prompt_ids
        assert examples[twin].prompt_ids == [prompt[0], *[pad] * (len(prompt) - 2), prompt[-1]]
        assert set(prompt[1:-1]) != {pad}


def test_a_twin_must_follow_a_row_with_its_picture(codec):
    from training.examples import GenerationExample

    tokens = np.arange(64)
    with pytest.raises(ValueError, match="twin of row 1"):
        generation_batch([GenerationExample([1, 2], tokens), GenerationExample([1, 0], tokens, twin=1)])
    with pytest.raises(ValueError, match="same picture"):
        generation_batch([GenerationExample([1, 2], tokens), GenerationExample([1, 0], tokens[::-1].copy(), twin=0)])


def _row_log_probs(model, batch, row: int) -> np.ndarray:
    """One row's next-image-token log-probabilities, run alone (numpy's log-softmax on the network's logits)."""
    import paddle

    P = int(batch.target_positions[row * 64] % batch.ids.shape[1]) + 1
    ids = batch.ids[row:row + 1, :P + 63]
    embeds = model.embed_text(paddle.to_tensor(ids))
    images = model.embed_image_tokens(paddle.to_tensor(batch.image_inputs[row * 63:(row + 1) * 63]))
    embeds = paddle.concat([embeds[:, :P], images.unsqueeze(0)], axis=1)
    logits = model.image_logits(model.causal_forward(embeds)[0, P - 1:]).numpy().astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _untrained_model_and_twins(codec, seed: int):
    """A demo-shaped network at its initial weights and a batch of 8 drawing pictures (random tokens) with two
    twins, noised as in training."""
    import paddle

    from model.janus import JanusModel
    from training.examples import generation_examples

    paddle.seed(0)
    model = JanusModel(demo_config())
    model.eval()
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(8)]
    tokens = rng.integers(16, size=(8, 64))
    return model, generation_batch(generation_examples(codec, scenes, tokens, rng, 0.25), rng, 0.1, 16), tokens


def test_the_agreement_loss_is_the_kl_of_each_conditional_row_to_its_twin(codec):
    import paddle

    from training.examples import GenerationExample
    from training.losses import generation_loss

    model, batch, tokens = _untrained_model_and_twins(codec, 4)
    with paddle.no_grad():
        drawing, agreement = generation_loss(model, batch)
        expected = []
        for conditional, twin in batch.twins:
            c, u = _row_log_probs(model, batch, conditional), _row_log_probs(model, batch, twin)
            expected.append((np.exp(c) * (c - u)).sum(-1).mean())
        assert float(agreement) == pytest.approx(np.mean(expected), rel=1e-3, abs=1e-6)
        assert float(agreement) > 1e-3
        # a "twin" that keeps the prompt agrees exactly; without twins the term is zero
        same = [GenerationExample(codec.generation_ids("a red circle"), tokens[0]),
                GenerationExample(codec.generation_ids("a red circle"), tokens[0], twin=0)]
        assert float(generation_loss(model, generation_batch(same))[1]) == pytest.approx(0, abs=1e-5)
        assert float(generation_loss(model, generation_batch(same[:1]))[1]) == 0


def test_the_guided_loss_is_the_cross_entropy_of_the_picture_under_guidance(codec):
    """generation_loss(guidance=w): each twin pair's tokens scored under softmax(w log c - (w - 1) log u), c and u
    each row run alone and combined in numpy."""
    import paddle

    from training.losses import generation_loss

    model, batch, _ = _untrained_model_and_twins(codec, 5)
    with paddle.no_grad():
        _, guided = generation_loss(model, batch, guidance=5.0)
        _, kl = generation_loss(model, batch)
        expected = []
        for conditional, twin in batch.twins:
            c, u = _row_log_probs(model, batch, conditional), _row_log_probs(model, batch, twin)
            mixed = 5.0 * c - 4.0 * u
            mixed -= mixed.max(-1, keepdims=True)
            mixed -= np.log(np.exp(mixed).sum(-1, keepdims=True))
            expected.append(-mixed[np.arange(64), batch.targets[conditional * 64:(conditional + 1) * 64]])
    assert float(guided) == pytest.approx(np.mean(expected), rel=1e-4)
    assert abs(float(guided) - float(kl)) > 1e-2  # not the agreement term

