"""The whole training of the demo model, stage by stage, from a seed to a checkpoint folder.

1. tokenizer: byte-level BPE on the grammar's texts (`demo_config.tokenizer_corpus`);
2. image tokens: a k-means codebook of 8 x 8 patches of generated-style pictures (`patch_codebook`);
3. VQ decoder: learns to draw the pictures back from their tokens (`decoder_training`);
4. vision encoder: edge detectors in its patch embedding, then a few minutes naming shapes, colours, sizes and
   places through a throwaway head (`vision_pretraining`);
5. the rest, jointly: vision encoder, aligners, language model and both heads, on generation and understanding
   examples in every step (`examples`, `losses`), the image-token embeddings started from the codebook's;
6. a quick check with the plain reference loops (`model.reference`), then the checkpoint (`export`).

Same seed, same machine: same weights. The CPU kernels are switched off (Paddle's own ops have gradients); the
caller sets JANUS_CPU_KERNELS=off before anything imports the model (`training.__main__` does).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import paddle
from PIL import Image

from model.config import JanusConfig
from model.image_processing import ImageProcessor
from model.janus import JanusModel, pixels_to_uint8
from model.tokenizer import JanusTokenizer
from model.tokenizer_builder import build_tiny_tokenizer, write_preprocessor_config
from training.decoder_training import train_decoder
from training.demo_config import (
    DESCRIPTION,
    SUGGESTED_PROMPTS,
    SUGGESTED_QUESTIONS,
    demo_config,
    tokenizer_corpus,
)
from training.examples import (
    Codec,
    generation_batch,
    generation_example,
    generation_examples,
    understanding_batch,
    understanding_example,
)
from training.export import write_checkpoint
from training.losses import generation_loss, understanding_loss
from training.optimisation import Progress, init_transformer_weights, optimiser, seed_convolutions
from training.patch_codebook import PatchCodebook, train_codebook
from training.quick_check import quick_check
from training.scenes import Scene, on_grid, random_scene, render
from training.vision_pretraining import pretrain_vision, start_with_edge_filters

GENERATION_BACKGROUNDS = 0.15  # share of generation pictures on a coloured background
PLAYGROUND_EXAMPLES = {"prompts": list(SUGGESTED_PROMPTS), "questions": list(SUGGESTED_QUESTIONS)}


@dataclass(frozen=True, slots=True)
class Options:
    seed: int = 0
    codebook_pictures: int = 4000
    codebook_iterations: int = 15
    decoder_steps: int = 1200
    decoder_batch: int = 8
    vision_steps: int = 600
    vision_batch: int = 32
    generation_pool: int = 20000  # scenes whose image tokens the language model learns to draw
    decoded_pool: int = 2000  # of those, pictures drawn by the trained decoder, for understanding
    lm_steps: int = 2000
    generation_batch: int = 24
    guidance_twins: float = 0.0  # share of the drawing pictures twinned (examples.generation_examples)
    twins_from: float = 0.0  # the share of the joint stage's steps before twins start (see twin_phase)
    understanding_batch: int = 12  # conversations of 1-3 questions
    token_noise: float = 0.1  # input image tokens replaced by random ones (see examples.generation_batch)
    lm_lr: float = 1e-3
    check_pictures: int = 60  # held-out pictures for the quick check (0: none)
    grid: int = 4  # pixels: the drawing pictures' shapes on this grid (scenes.on_grid; 0: anywhere)
    guidance_steps: int = 200  # the guidance stage after the joint stage (see guidance_stage; 0: none)
    guidance_weight: float = 5.0  # the guidance weight it trains for (the service's default cfg_weight)
    guidance_term: float = 0.05  # the guided cross-entropy's share of the loss
    guidance_lr: float = 3e-4


def train_demo(out: Path, options: Options, log: TextIO | None = None) -> dict:
    """Train and write the checkpoint to `out`; returns the summary also written to out/training.json."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(options.seed)
    paddle.seed(options.seed)
    timings: dict[str, float] = {}
    cfg = demo_config()
    cfg.description = DESCRIPTION

    # tokenizer
    build_tiny_tokenizer(out, cfg.language.vocab_size, tokenizer_corpus())
    tokenizer = JanusTokenizer.from_dir(out)
    write_preprocessor_config(out, cfg.vision.image_size)

    # image tokens
    mark = time.perf_counter()
    codebook, pictures = image_codebook(cfg, options, rng)
    timings["codebook_s"] = time.perf_counter() - mark

    # VQ decoder
    mark = time.perf_counter()
    model = JanusModel(cfg)
    seed_convolutions(model.gen_vision_model, rng)
    model.gen_vision_model.quantize.embedding.weight.set_value(codebook_embedding(codebook))
    decoder_history = train_decoder(model.gen_vision_model, codebook.encode(pictures), pictures,
                                    options.decoder_steps, options.decoder_batch, rng, log=log)
    timings["decoder_s"] = time.perf_counter() - mark

    # the language model, the vision encoder and everything around them
    mark = time.perf_counter()
    pool, pool_tokens, drawn = drawing_pool(model, codebook, rng, options.generation_pool, options.decoded_pool,
                                            options.grid)
    processor = ImageProcessor.from_dir(out)
    codec = Codec(tokenizer, processor, codebook, cfg.vision.num_tokens)
    init_transformer_weights(model, rng, cfg.language.num_hidden_layers)
    timings["lm_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    start_with_edge_filters(model.vision_model)
    vision_history = pretrain_vision(model.vision_model, processor, options.vision_steps, options.vision_batch,
                                     rng, log=log)
    timings["vision_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    # what an image token means to the language model, from the start: its patch's colour and edge (as for the
    # decoder's codebook), not a random vector the model must first learn to tell from the others
    model.gen_embed.weight.set_value(codebook_embedding(codebook))
    lm_history = train_language_model(model, codec, pool, pool_tokens, drawn, options, rng, log)
    timings["lm_s"] += time.perf_counter() - mark

    guidance_history = []
    if options.guidance_steps:
        mark = time.perf_counter()
        guidance_history = guidance_stage(model, codec, options, log)
        timings["guidance_s"] = time.perf_counter() - mark

    check = {}
    if options.check_pictures:
        mark = time.perf_counter()
        check = quick_check(model, codec, np.random.default_rng(options.seed + 1), options.check_pictures)
        timings["check_s"] = time.perf_counter() - mark
    write_checkpoint(model, out, out, PLAYGROUND_EXAMPLES)
    timings["total_s"] = time.perf_counter() - started
    summary = {"options": asdict(options), "timings": timings, "quick_check": check,
               "losses": {"decoder": decoder_history[-1:], "vision": vision_history[-1:], "lm": lm_history[-1:],
                          "guidance": guidance_history[-1:]}}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def image_codebook(cfg: JanusConfig, options: Options, rng: np.random.Generator) -> tuple[PatchCodebook, np.ndarray]:
    """The image tokenizer's k-means codebook and the pictures it was trained on (the first stage's random numbers:
    the same seed gives the same codebook)."""
    size = cfg.gen_vision.image_size
    scenes = drawing_scenes(rng, options.codebook_pictures, size, options.grid)
    pictures = np.stack([np.asarray(render(s, size)) for s in scenes])
    grid = cfg.gen_vision.grid
    codebook = train_codebook(pictures, cfg.gen_vision.image_token_size, grid, size // grid, rng,
                              options.codebook_iterations)
    return codebook, pictures


def resume_guidance_stage(joint: Path, out: Path, options: Options, log: TextIO | None = None) -> dict:
    """The guidance stage (and the check) on the checkpoint of a run that stopped after the joint stage (one trained
    with guidance_steps 0 and otherwise these options): what the whole run with these options writes. The image
    codebook is trained again from the seed, as the first stage trained it."""
    from model.checkpoint.loader import load_janus

    started = time.perf_counter()
    model, _ = load_janus(joint, cache_dir=False)
    for parameter in model.parameters():
        parameter.stop_gradient = False
    cfg = model.cfg
    tokenizer, processor = JanusTokenizer.from_dir(joint), ImageProcessor.from_dir(joint)
    codebook, _ = image_codebook(cfg, options, np.random.default_rng(options.seed))
    codec = Codec(tokenizer, processor, codebook, cfg.vision.num_tokens)
    history = guidance_stage(model, codec, options, log)
    check = quick_check(model, codec, np.random.default_rng(options.seed + 1), options.check_pictures) \
        if options.check_pictures else {}
    write_checkpoint(model, joint, out, PLAYGROUND_EXAMPLES)
    summary = json.loads((joint / "training.json").read_text())
    summary["options"] = asdict(options)
    summary["timings"]["guidance_s"] = time.perf_counter() - started
    summary["timings"]["total_s"] += summary["timings"]["guidance_s"]
    summary["quick_check"] = check
    summary["losses"]["guidance"] = history[-1:]
    summary["resumed_from"] = "the joint stage's checkpoint of a run with guidance_steps 0"
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def drawing_scenes(rng: np.random.Generator, count: int, size: int, grid: int) -> list[Scene]:
    """Scenes of the kind the model learns to draw (and the image tokenizer to code): `size` px pictures, their
    shapes on a `grid`-pixel grid (0: anywhere)."""
    scenes = [random_scene(rng, coloured_background=GENERATION_BACKGROUNDS) for _ in range(count)]
    return [on_grid(scene, size, grid) for scene in scenes] if grid else scenes


def codebook_embedding(codebook: PatchCodebook) -> np.ndarray:
    """The decoder's 8-dimensional codebook entries, started where they already mean something: each patch's mean
    colour (scaled to [-1, 1]) and its first five principal components of what is left (the edge's shape). A
    decoder started from random entries first spends hundreds of steps finding out which token is which colour."""
    centroids = codebook.centroids
    mean = centroids.reshape(len(centroids), -1, 3).mean(axis=1)
    rest = centroids - np.tile(mean, codebook.patch * codebook.patch)
    rest -= rest.mean(axis=0)
    _, singular, axes = np.linalg.svd(rest, full_matrices=False)
    parts = rest @ axes[:5].T / (singular[:5] / np.sqrt(len(centroids)))
    return np.concatenate([mean * 2 - 1, parts], axis=1).astype(np.float32)


def drawing_pool(model: JanusModel, codebook: PatchCodebook, rng: np.random.Generator, count: int, decoded: int,
                 grid: int) -> tuple[list[Scene], np.ndarray, np.ndarray]:
    """A stage's drawing scenes, their pictures' image tokens, and the first `decoded` of them drawn back by the
    model's VQ decoder (for understanding examples about decoded pictures)."""
    size = model.cfg.gen_vision.image_size
    pool = drawing_scenes(rng, count, size, grid)
    tokens = codebook.encode(np.stack([np.asarray(render(s, size)) for s in pool]))
    return pool, tokens, decoded_pictures(model, tokens[:decoded])


def decoded_pictures(model: JanusModel, tokens: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 pictures [N, S, S, 3] as the trained decoder draws them (what the service returns for these tokens)."""
    out = []
    with paddle.no_grad():
        for start in range(0, len(tokens), batch):
            pixels = model.decode_pixels(paddle.to_tensor(tokens[start:start + batch]))
            out.append(pixels_to_uint8(pixels.numpy().transpose(0, 2, 3, 1)))
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def twin_phase(options: Options, step: int) -> float:
    """The share of a batch's drawing pictures that get a guidance twin at this step of the joint stage: none before
    `twins_from` of the steps (prompts are dropped at random there, as Janus trains), `guidance_twins` after (what
    they gave, early and late: examples.generation_examples)."""
    return options.guidance_twins if step >= options.twins_from * options.lm_steps else 0.0


DECODED_SHARE = 0.2  # understanding examples whose picture is one the decoder drew


def train_language_model(model: JanusModel, codec: Codec, pool: list, pool_tokens: np.ndarray, drawn: np.ndarray,
                         options: Options, rng: np.random.Generator, log: TextIO | None, stage: str = "model",
                         guidance: float = 0.0, term: float = 1.0) -> list[dict]:
    """The joint stage (and, with `guidance`, the guidance stage: the twins' term is then the guided cross-entropy
    at that weight, `losses.generation_loss`, weighted by `term`)."""
    parameters = [p for name, p in model.named_parameters() if not name.startswith("gen_vision_model.")]
    opt, schedule = optimiser(parameters, options.lm_steps, options.lm_lr, warmup=max(1, options.lm_steps // 30))
    progress = Progress(stage, options.lm_steps, log=log)
    image_id = codec.tokenizer.image_id
    model.train()
    for step in range(options.lm_steps):
        twins = twin_phase(options, step)
        if twins:
            # about as many rows as without twins: pictures and their twins together make generation_batch (24 at
            # a share of 0.25: 19 and 5), as near as rounding the two counts allows
            chosen = rng.integers(len(pool), size=round(options.generation_batch / (1 + twins)))
            pictures = generation_examples(codec, [pool[i] for i in chosen], pool_tokens[chosen], rng, twins)
        else:
            chosen = rng.integers(len(pool), size=options.generation_batch)
            pictures = [generation_example(codec, pool[i], pool_tokens[i], rng) for i in chosen]
        generation = generation_batch(pictures, rng, options.token_noise, model.cfg.gen_vision.image_token_size)
        examples = []
        for _ in range(options.understanding_batch):
            if len(drawn) and rng.random() < DECODED_SHARE:
                index = int(rng.integers(len(drawn)))
                examples.append(understanding_example(codec, rng, Image.fromarray(drawn[index]), pool[index]))
            else:
                examples.append(understanding_example(codec, rng))
        understanding = understanding_batch(examples)
        drawing, agreement = generation_loss(model, generation, guidance)
        answering = understanding_loss(model, understanding, image_id)
        loss = drawing + answering
        (loss + term * agreement if twins else loss).backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        losses = {"generation": float(drawing), "understanding": float(answering)}
        if twins:
            losses["guided" if guidance else "agreement"] = float(agreement)
        progress.update(step, **losses)
    model.eval()
    return progress.history


GUIDANCE_POOL = 6000  # fresh drawing scenes for the guidance stage
GUIDANCE_TWINS = 0.25  # of its pictures, the share also drawn unprompted (19 and 5 of a batch of 24)


def guidance_stage(model: JanusModel, codec: Codec, options: Options, log: TextIO | None) -> list[dict]:
    """A few hundred more steps of the joint stage at a lower rate, in which a quarter of the drawing pictures get
    an unconditional twin and the twins' term is the cross-entropy of the picture's tokens under guidance at
    `guidance_weight` (`losses.generation_loss`): the unconditional half learns what guidance needs of it.

    Why: trained only on dropped prompts, the unconditional half is the weaker model, and guidance at w raises its
    disagreements with the conditional half to the power w - 1; on this model's sharp conditional distribution
    guidance 5 broke nearly every square (1 of 24 right with shapes on the grid, 23 of 24 without guidance).

    Its own random numbers and pictures (from the seed, not from the stages before), so that the stage can be run
    again on the joint stage's checkpoint (`resume_guidance_stage`) and give what a whole run gives."""
    rng = np.random.default_rng([options.seed, 2])
    pool, pool_tokens, drawn = drawing_pool(model, codec.codebook, rng, GUIDANCE_POOL, GUIDANCE_POOL // 10,
                                            options.grid)
    stage = replace(options, lm_steps=options.guidance_steps, lm_lr=options.guidance_lr,
                    guidance_twins=GUIDANCE_TWINS, twins_from=0.0)
    return train_language_model(model, codec, pool, pool_tokens, drawn, stage, rng, log, stage="guidance",
                                guidance=options.guidance_weight, term=options.guidance_term)
