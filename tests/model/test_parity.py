"""Parity with an independent implementation: Hugging Face transformers' Janus (torch, own venv), same weights.

Arithmetic in float32; logits within 1e-4 absolute; greedy sequences identical. Twice: with a float32 checkpoint,
and with a bf16-stored one whose weights the network keeps as bf16 on the CPU (transformers widens them to float32,
which is exact, so both must compute the same numbers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from model import reference
from model.chat_template import expand_image_ids, generation_prompt, place_images, understanding_prompt
from model.checkpoint.loader import load_janus
from model.image_processing import ImageProcessor
from model.janus import JanusModel
from model.kv_cache import RowBatch
from model.tiny_checkpoint import build_tiny_checkpoint
from tests.model.cached_loops import greedy_image, greedy_text
from tests.oracle.client import oracle_python, run_oracle

pytestmark = pytest.mark.parity
ATOL = 1e-4
MAX_NEW = 12
CFG = 5.0


def _images(size: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    wide = Image.fromarray(rng.integers(0, 255, (size // 2, size, 3), dtype=np.uint8))
    tall = Image.fromarray(np.linspace(0, 255, size * size // 2 * 3).astype(np.uint8).reshape(size, size // 2, 3))
    return [wide, tall]


@dataclass
class Subject:
    directory: Path
    model: JanusModel
    bf16_weights: bool


@pytest.fixture(scope="module", params=["float32", "bf16-stored"])
def subject(request, tiny_dir, tiny_model, tmp_path_factory) -> Subject:
    if request.param == "float32":
        return Subject(tiny_dir, tiny_model, False)
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bf16"), preset="tiny", seed=0, dtype="bfloat16")
    model, report = load_janus(directory, cache_dir=False, keep_bf16=True)
    assert report.weights == "bfloat16"
    return Subject(directory, model, True)


@pytest.fixture(scope="module")
def case(subject, tiny_tokenizer):
    """Two understanding prompts (left-padded batch: one image, and two images), one generation prompt."""
    if oracle_python() is None:
        if os.environ.get("JANUS_REQUIRE_ORACLE") == "1":
            pytest.fail("the oracle venv is required here but missing (tests/oracle/setup_venv.sh)")
        pytest.skip("oracle venv not set up (tests/oracle/setup_venv.sh)")
    tok, cfg, tiny_dir = tiny_tokenizer, subject.model.cfg, subject.directory
    prompts = [understanding_prompt("What colour is the sky in this picture?", num_images=1),
               understanding_prompt(place_images("<image_placeholder> and <image_placeholder>: which is brighter?"),
                                    num_images=2)]
    rows = [expand_image_ids(tok.encode(p.text), tok.image_id, tok.boi_id, tok.eoi_id, cfg.vision.num_tokens)
            for p in prompts]
    width = max(map(len, rows))
    ids = np.full((2, width), tok.pad_id, np.int64)
    mask = np.zeros((2, width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    images = _images(64)
    pixels = ImageProcessor.from_dir(tiny_dir)(images + images[::-1][:1])  # row 0: 1 image, row 1: 2 images
    gen_ids = np.array([tok.encode(generation_prompt("a red cube on a wooden table").text)], np.int64)
    vq_tokens = np.random.default_rng(3).integers(0, cfg.gen_vision.image_token_size, (2, cfg.gen_vision.num_tokens))
    requests = {
        "und_input_ids": ids, "und_attention_mask": mask, "und_pixel_values": pixels,
        "image_token_id": np.int64(tok.image_id), "und_max_new_tokens": np.int64(MAX_NEW),
        "eos_token_id": np.int64(tok.eos_id), "pad_token_id": np.int64(tok.pad_id),
        "gen_input_ids": gen_ids, "gen_pad_id": np.int64(tok.pad_id), "gen_cfg_weight": np.float64(CFG),
        "vq_tokens": vq_tokens,
    }
    return requests, rows, run_oracle(tiny_dir, requests)


def test_aligned_image_features_match(case, subject):
    model = subject.model
    requests, _, oracle = case
    ours = model.encode_images(paddle.to_tensor(requests["und_pixel_values"])).numpy()
    np.testing.assert_allclose(ours, oracle["image_features"], atol=ATOL, rtol=0)


def test_understanding_logits_match_on_a_left_padded_batch(case, subject, tiny_tokenizer):
    model = subject.model
    requests, _, oracle = case
    ids, mask = requests["und_input_ids"], requests["und_attention_mask"]
    features = model.encode_images(paddle.to_tensor(requests["und_pixel_values"]))
    embeds = model.embed_prompt(paddle.to_tensor(ids), features, tiny_tokenizer.image_id)
    blocks = -(-ids.shape[1] // 16)
    cache = model.new_cache(2 * blocks, 16)
    rows = RowBatch.of([list(range(blocks)), list(range(blocks, 2 * blocks))], [0, 0],
                       (ids.shape[1] - mask.sum(axis=1)).tolist())
    hidden = model.extend(embeds, cache, rows)
    ours = model.text_logits(hidden).numpy()
    real = mask.astype(bool)
    assert np.abs(oracle["und_logits"][real]).max() > 1.0  # not near-uniform: the comparison means something
    np.testing.assert_allclose(ours[real], oracle["und_logits"][real], atol=ATOL, rtol=0)


def test_greedy_continuation_ids_are_identical(case, subject, tiny_tokenizer):
    model = subject.model
    requests, rows, oracle = case
    pixels = requests["und_pixel_values"]
    per_row = [pixels[:1], pixels[1:]]
    for i, row in enumerate(rows):
        loop = greedy_text if subject.bf16_weights else reference.understand  # PaddleNLP's forward: float32 only
        ours = loop(model, np.array(row), per_row[i], tiny_tokenizer.image_id, tiny_tokenizer.eos_id, MAX_NEW)
        theirs = oracle["und_greedy_ids"][i].tolist()
        assert ours == theirs[: len(ours)]


def test_first_generation_step_logits_match(case, subject, tiny_tokenizer):
    model = subject.model
    requests, _, oracle = case
    cond, uncond = reference.generation_rows(requests["gen_input_ids"][0], tiny_tokenizer.pad_id)
    T = len(cond)
    blocks = -(-T // 16)
    cache = model.new_cache(2 * blocks, 16)
    rows = RowBatch.of([list(range(blocks)), list(range(blocks, 2 * blocks))], [0, 0])
    hidden = model.extend(model.embed_text(paddle.to_tensor(np.stack([cond, uncond]))), cache, rows)
    logits = model.image_logits(hidden[:, -1]).numpy()
    guided = logits[1] + CFG * (logits[0] - logits[1])
    np.testing.assert_allclose(logits[0], oracle["gen_cond_logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits[1], oracle["gen_uncond_logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(guided, oracle["gen_guided_logits"], atol=ATOL * CFG, rtol=0)


def test_whole_greedy_image_token_sequence_is_identical(case, subject, tiny_tokenizer):
    model = subject.model
    requests, _, oracle = case
    if subject.bf16_weights:  # PaddleNLP's forward (the plain loop) multiplies float32 weights only
        tokens = greedy_image(model, requests["gen_input_ids"][0], tiny_tokenizer.pad_id, CFG)
    else:
        tokens = reference.generate(model, requests["gen_input_ids"][0], tiny_tokenizer.pad_id, parallel_size=1,
                                    cfg_weight=CFG, temperature=0.0)
    assert len(set(oracle["gen_greedy_tokens"].tolist())) > 1
    np.testing.assert_array_equal(tokens[0], oracle["gen_greedy_tokens"])


def test_vq_decoded_pixels_match(case, subject):
    model = subject.model
    requests, _, oracle = case
    ours = model.decode_pixels(paddle.to_tensor(requests["vq_tokens"])).numpy()
    assert ours.shape == oracle["vq_pixels"].shape
    np.testing.assert_allclose(ours, oracle["vq_pixels"], atol=ATOL, rtol=0)


def test_final_uint8_images_match(case, subject):
    model = subject.model
    # transformers' post-processing of its own decoder output: the pictures a user gets
    requests, _, oracle = case
    theirs = oracle["vq_images"]
    assert (np.abs(oracle["vq_pixels"]) > 1).mean() > 0.05  # enough pixels beyond [-1, 1] to need the clip
    ours = model.decode_images(paddle.to_tensor(requests["vq_tokens"]))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8
    # Both cut off the fraction; the decoders agree to ~1e-5, which can move a value across a whole number.
    difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert difference.max() <= 1, f"{np.count_nonzero(difference > 1)} values differ by more than 1"
    assert np.count_nonzero(difference) <= difference.size // 100
