"""A few minutes' look at what the trained network does, through the plain reference loops (`model.reference`),
judged by `training.judge` (numpy and Pillow, not the model). The full quality table is `bench.demo_quality`,
which asks the running service instead."""

from __future__ import annotations

import numpy as np
import paddle

from model import reference
from model.janus import JanusModel
from training.examples import Codec, varied_picture
from training.judge import judge
from training.scenes import COLOURS, SHAPES, article, random_scene


def quick_check(model: JanusModel, codec: Codec, rng: np.random.Generator, pictures: int) -> dict[str, float]:
    tok = codec.tokenizer
    named = {"colour": 0, "shape": 0}
    ids = np.asarray(codec.understanding_ids([], "What is in this picture?", system=True))
    for _ in range(pictures):
        scene = random_scene(rng, coloured_background=0.3, jitter_colours=True)
        pixels = codec.processor([varied_picture(scene, rng)])
        text = tok.decode(reference.understand(model, ids, pixels, tok.image_id, tok.eos_id, 24)).lower()
        named["colour"] += f" {scene.colour} " in f" {text} "
        named["shape"] += scene.shape in text
    drawn = {"colour": 0, "shape": 0}
    prompts = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    for index, (colour, shape) in enumerate(prompts):
        prompt_ids = np.asarray(codec.generation_ids(f"{article(colour)} {colour} {shape}"))
        tokens = reference.generate(model, prompt_ids, tok.pad_id, cfg_weight=5.0, temperature=1.0, seed=index)
        with paddle.no_grad():
            image = model.decode_images(paddle.to_tensor(tokens))[0]
        verdict = judge(image)
        drawn["colour"] += verdict.colour == colour
        drawn["shape"] += verdict.shape == shape
    return {"understanding_colour": named["colour"] / pictures, "understanding_shape": named["shape"] / pictures,
            "generation_colour": drawn["colour"] / len(prompts), "generation_shape": drawn["shape"] / len(prompts)}
