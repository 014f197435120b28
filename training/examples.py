"""Training examples in exactly the form the service feeds the model.

Prompts come from the project's own chat template and tokenizer (`model.chat_template`, `model.tokenizer`): a
generation prompt is what `POST /generate` builds, an understanding prompt what `POST /understand` builds for one
image and a question (with the default system prompt, or none), so what the model learns is what it is asked.
Pictures for understanding go through the checkpoint's own image processor.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.chat_template import (
    DEEPSEEK,
    DEFAULT_SYSTEM_PROMPT,
    IMAGE,
    conversation_prompt,
    expand_image_ids,
    generation_prompt,
)
from model.image_processing import ImageProcessor
from model.tokenizer import JanusTokenizer
from training.patch_codebook import PatchCodebook
from training.scenes import QUESTIONS, Scene, answer, prompt_for, question_for, random_scene, render

DROP_PROMPT = 0.15  # generation prompts replaced by padding (the unconditional half of classifier-free guidance)
NO_SYSTEM_PROMPT = 0.15  # understanding prompts without the default system prompt
MAX_TURNS = 3  # questions about one picture in one training conversation (every answer is learned)


@dataclass(frozen=True, slots=True)
class GenerationExample:
    prompt_ids: list[int]  # BOS ... <begin_of_image>
    image_tokens: np.ndarray  # [grid * grid]
    twin: int | None = None  # the earlier row of the batch whose picture this row draws with the prompt dropped


@dataclass(frozen=True, slots=True)
class UnderstandingExample:
    ids: list[int]  # the whole conversation: prompt (image placeholders expanded) and every answer
    pixels: np.ndarray  # [3, S, S] float32, the processor's output
    answers: list[tuple[int, int]]  # (first, end) of each answer in `ids`, its end-of-sentence token included


@dataclass(frozen=True, slots=True)
class Codec:
    tokenizer: JanusTokenizer
    processor: ImageProcessor
    codebook: PatchCodebook
    vision_tokens: int  # placeholder positions per input image

    def generation_ids(self, prompt: str, drop: bool = False) -> list[int]:
        ids = self.tokenizer.encode_prompt(generation_prompt(prompt, DEEPSEEK))
        if drop:  # as the engine builds the unconditional row: BOS, padding, <begin_of_image>
            ids = [ids[0], *[self.tokenizer.pad_id] * (len(ids) - 2), ids[-1]]
        return ids

    def understanding_ids(self, turns: list[tuple[str, str]], question: str, system: bool) -> list[int]:
        """The picture before the first question (`IMAGE` then a line break, the reference layout), earlier
        (question, answer) turns, then the question."""
        messages: list[tuple[str, object]] = []
        for index, (asked, answered) in enumerate([*turns, (question, "")]):
            content = (IMAGE, "\n", asked) if index == 0 else asked
            messages.append(("user", content))
            if answered:
                messages.append(("assistant", answered))
        prompt = conversation_prompt(messages, DEEPSEEK, DEFAULT_SYSTEM_PROMPT if system else "")  # type: ignore[arg-type]
        tok = self.tokenizer
        return expand_image_ids(tok.encode_prompt(prompt), tok.image_id, tok.boi_id, tok.eoi_id, self.vision_tokens)

    def answer_ids(self, text: str) -> list[int]:
        """What the model writes after `<|Assistant|>:`: a space, the answer, the end of its turn."""
        return [*self.tokenizer.encode_plain(" " + text), self.tokenizer.eos_id]


def generation_example(codec: Codec, scene: Scene, tokens: np.ndarray, rng: np.random.Generator) -> GenerationExample:
    return GenerationExample(codec.generation_ids(prompt_for(scene, rng), drop=rng.random() < DROP_PROMPT), tokens)


def generation_examples(codec: Codec, scenes: list[Scene], tokens: np.ndarray, rng: np.random.Generator,
                        twins: float) -> list[GenerationExample]:
    """Guidance twins (training option `guidance_twins`, off by default): each picture with a prompt it satisfies,
    then a share `twins` of them again with the prompt dropped, as the engine builds the unconditional row of
    classifier-free guidance: each twin sees exactly its conditional row's inputs, and the loss
    (`losses.generation_loss`) asks it to agree with that row's prediction as well as to predict the picture's tokens.

    Why: guidance at weight w samples from c^w / u^(w-1) (c and u the conditional and unconditional next-token
    distributions), so wherever the two disagree at random in their tails - on tokens neither gives much
    probability - the disagreement is raised to the power w - 1 and shows as stray patches. Learned from different
    pictures the two tails disagree freely; a twin learns u on the same context as c, towards the average of c over
    the prompts the context allows, which is what u should be.

    Measured: on the committed checkpoint, 350 more steps with six twins added to each batch of 24 drew the right
    shape at guidance 5 76% of the time against 61% for 350 more steps without them (guidance 1: 85% and 85%;
    colour at 5: 94% and 99%). Trained from the start instead (a quarter of 20 pictures twinned, no random drops,
    the decoder stage at 1,000 steps to keep the hour), the whole demo model came out worse on every shape measure
    of bench.demo_quality (guidance 5: 64% against 65%, guidance 1: 58% against 81%, understanding's shapes 36%
    against 85%), one run against one run with two changes at once. Twins only in the joint stage's last third
    (twins_from 0.667; the first two thirds are then the committed training's own, step for step): shape at
    guidance 5 68% (committed 65%), at guidance 1 69% (81%), round trip 62% (50%) - mixed, so it stays an option.
    """
    prompts = [prompt_for(scene, rng) for scene in scenes]
    examples = [GenerationExample(codec.generation_ids(prompt), picture)
                for prompt, picture in zip(prompts, tokens, strict=True)]
    # as long as the conditional row's prompt, as in the engine: the image tokens sit at the same positions
    pairs = [GenerationExample(codec.generation_ids(prompts[row], drop=True), tokens[row], twin=row)
             for row in range(round(len(examples) * twins))]
    return examples + pairs


def understanding_example(codec: Codec, rng: np.random.Generator,
                          picture: Image.Image | None = None, scene: Scene | None = None) -> UnderstandingExample:
    """One to MAX_TURNS questions about a picture, each answered, as the conversation the service would build when
    they are asked one after the other: drawn here from a random scene (`scene` given with `picture`: that picture,
    e.g. one the VQ decoder drew)."""
    if scene is None:
        scene = random_scene(rng, coloured_background=0.3, jitter_colours=rng.random() < 0.7)
    if picture is None:
        picture = varied_picture(scene, rng)
    topics = list(QUESTIONS)
    system = rng.random() >= NO_SYSTEM_PROMPT
    turns: list[tuple[str, str]] = []
    ids: list[int] = []
    answers: list[tuple[int, int]] = []
    for _ in range(int(rng.integers(1, MAX_TURNS + 1))):
        topic = topics[rng.integers(len(topics))]
        question, reply = question_for(topic, rng), answer(scene, topic)
        prompt = codec.understanding_ids(turns, question, system)
        if prompt[:len(ids)] != ids:  # the template renders earlier turns exactly as they were answered
            raise AssertionError("a follow-up's prompt does not continue the conversation before it")
        ids = prompt + codec.answer_ids(reply)
        answers.append((len(prompt), len(ids)))
        turns.append((question, reply))
    return UnderstandingExample(ids, codec.processor([picture])[0], answers)


def varied_picture(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as pictures come from elsewhere: any size from thumbnails up, sometimes not square, sometimes
    JPEG-compressed."""
    side = int(rng.integers(40, 220))
    width = height = side
    if rng.random() < 0.3:
        ratio = float(rng.uniform(0.6, 1.6))
        width, height = max(16, int(side * ratio)), side
    picture = render(scene, width, height)
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(30, 95)))
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return picture


@dataclass(slots=True)
class GenerationBatch:
    ids: np.ndarray  # [B, T] int64: the prompt ids, then zeros where image tokens go
    image_inputs: np.ndarray  # [B * (tokens - 1)] the image tokens fed as inputs
    image_positions: np.ndarray  # [B * (tokens - 1)] their places in the flattened [B * T]
    target_positions: np.ndarray  # [B * tokens] flattened positions whose hidden state predicts each token
    targets: np.ndarray  # [B * tokens]
    twins: np.ndarray  # [P, 2] int64: (conditional row, its unconditional twin's row)


@dataclass(slots=True)
class UnderstandingBatch:
    ids: np.ndarray  # [B, T] int64: the conversations (each one's last token is only a target), right-padded
    pixels: np.ndarray  # [B, 3, S, S]
    target_positions: np.ndarray
    targets: np.ndarray


def generation_batch(examples: list[GenerationExample], rng: np.random.Generator | None = None,
                     noise: float = 0.0, vocabulary: int = 0) -> GenerationBatch:
    """`noise`: the share of input image tokens replaced by random ones (the targets stay): a drawing whose
    colour could always be copied from the tokens before would never learn to read it from the prompt. A twin is
    fed exactly what its conditional row is fed, noise included."""
    count = len(examples[0].image_tokens)
    T = max(len(e.prompt_ids) for e in examples) + count - 1
    ids = np.zeros((len(examples), T), np.int64)
    inputs, positions, target_positions, targets = [], [], [], []
    for b, example in enumerate(examples):
        P = len(example.prompt_ids)
        ids[b, :P] = example.prompt_ids
        fed = example.image_tokens[:-1].copy()
        if example.twin is not None:
            if not 0 <= example.twin < b or not np.array_equal(examples[example.twin].image_tokens,
                                                              example.image_tokens):
                raise ValueError(f"row {b} is the twin of row {example.twin}, which is not an earlier row with "
                                 "the same picture")
            fed = inputs[example.twin].copy()
        elif noise and rng is not None:
            hit = rng.random(len(fed)) < noise
            fed[hit] = rng.integers(vocabulary, size=int(hit.sum()))
        inputs.append(fed)
        positions.append(b * T + P + np.arange(count - 1))
        target_positions.append(b * T + P - 1 + np.arange(count))
        targets.append(example.image_tokens)
    twins = np.array([(e.twin, b) for b, e in enumerate(examples) if e.twin is not None], np.int64).reshape(-1, 2)
    return GenerationBatch(ids, *(np.concatenate(x).astype(np.int64) for x in (inputs, positions, target_positions,
                                                                               targets)), twins)


def understanding_batch(examples: list[UnderstandingExample]) -> UnderstandingBatch:
    T = max(len(e.ids) - 1 for e in examples)  # the last token is only a target
    ids = np.zeros((len(examples), T), np.int64)
    target_positions, targets = [], []
    for b, example in enumerate(examples):
        ids[b, :len(example.ids) - 1] = example.ids[:-1]
        for first, end in example.answers:
            target_positions.append(b * T + np.arange(first - 1, end - 1))
            targets.append(example.ids[first:end])
    return UnderstandingBatch(ids, np.stack([e.pixels for e in examples]),
                              np.concatenate(target_positions).astype(np.int64),
                              np.concatenate(targets).astype(np.int64))
