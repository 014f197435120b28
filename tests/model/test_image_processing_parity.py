"""Image preprocessing against transformers' Janus image processor (PIL backend, own venv), value by value.

Noise and photo-like pictures (gradients, shapes, thin edges, grain) of several sizes, landscape and portrait,
shrunk and enlarged, in RGB, RGBA, palette and grey modes: the resize filter, the size rule, the padding, the
scaling and the normalisation all show in the values, which single-colour images hide.

The reference pipeline is DeepSeek's: the image loading converts every picture to RGB with PIL (which drops an
alpha channel; transformers' processor converts nothing by default and takes only 3 channels), then the processor.
One rule differs between transformers' port and DeepSeek's own `VLMImageProcessor`, which the checkpoints were
trained with and the project follows: the short side. DeepSeek truncates `int(side / longest * size)`, transformers
rounds. The sizes here are chosen where both agree (checked below); tests/model/test_image_processing.py pins the
truncation.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.image_processing import ImageProcessor
from model.tokenizer_builder import write_preprocessor_config
from tests.oracle.client import oracle_python, run_oracle

pytestmark = pytest.mark.parity

# One step of a byte after scaling by 1/255 and normalising with std 0.5. Identical resampling gives identical
# bytes, so the values agree exactly; a step of slack allows for another Pillow build's rounding. A bilinear resize
# is off by up to dozens of steps on these pictures.
ONE_LEVEL = 2 / 255
MIN_SIZE = 14


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A procedural picture: two crossing gradients and a soft highlight, filled and outlined shapes, one-pixel
    lines (hard edges), and sensor-like grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    base = np.stack([255 * u, 255 * v, 255 * (1 - u) * v + 60 * np.sin(9 * u)], axis=-1)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    base += 80 * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) * 12)[..., None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, x1 = sorted(int(c) for c in rng.integers(0, width, 2))
        y0, y1 = sorted(int(c) for c in rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=int(rng.integers(1, 4)))
    for _ in range(4):
        ends = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(ends, fill=(255, 255, 255), width=1)
    grainy = np.asarray(image, dtype=np.float64) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(grainy, 0, 255).astype(np.uint8))


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def with_alpha(image: Image.Image, opaque: bool) -> Image.Image:
    width, height = image.size
    alpha = np.full((height, width), 255, np.uint8) if opaque else \
        np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


CASES: dict[str, Image.Image] = {
    "photo_landscape_640x480": photo_like(640, 480, 1),
    "photo_portrait_300x500": photo_like(300, 500, 2),
    "photo_enlarged_50x30": photo_like(50, 30, 3),
    "noise_portrait_97x251": noise(97, 251, 4),
    "noise_strip_1000x30": noise(1000, 30, 5),  # the short side stops at min_size
    "photo_rgba_opaque_400x300": with_alpha(photo_like(400, 300, 6), opaque=True),
    "photo_rgba_translucent_300x400": with_alpha(photo_like(300, 400, 7), opaque=False),
    "photo_palette_360x600": photo_like(360, 600, 8).quantize(colors=64),
    "photo_grey_512x200": photo_like(512, 200, 9).convert("L"),
}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def both_rules_agree(width: int, height: int, size: int) -> bool:
    longest = max(width, height)
    return all(max(int(side / longest * size), MIN_SIZE) == max(round(side * (size / longest)), MIN_SIZE)
               for side in (width, height))


def test_the_cases_cover_the_modes_and_orientations():
    assert {"RGB", "RGBA", "P", "L"} <= {image.mode for image in CASES.values()}
    sizes = [image.size for image in CASES.values()]
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert any(max(w, h) > 384 for w, h in sizes) and any(max(w, h) < 384 for w, h in sizes)  # shrunk, enlarged
    # not single colours: every picture has many distinct values
    assert all(len(np.unique(np.asarray(image))) > 50 for image in CASES.values())


SIZES = (384, 32)  # the published size, and the tiny test checkpoints' size


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """size -> (ours, transformers') pixel values per case."""
    if oracle_python() is None:
        if os.environ.get("JANUS_REQUIRE_ORACLE") == "1":
            pytest.fail("the oracle venv is required here but missing (tests/oracle/setup_venv.sh)")
        pytest.skip("oracle venv not set up (tests/oracle/setup_venv.sh)")
    for size in SIZES:
        for name, image in CASES.items():
            assert both_rules_agree(*image.size, size), f"{name}: truncating and rounding give different sizes"
    files = {name: png(image) for name, image in CASES.items()}
    requests = {f"pre_image_{i}": np.frombuffer(data, np.uint8) for i, data in enumerate(files.values())}
    requests["pre_sizes"] = np.array(SIZES, np.int64)
    config_dir: Path = tmp_path_factory.mktemp("preprocessor")
    write_preprocessor_config(config_dir)
    oracle = run_oracle(config_dir, requests)
    results = {}
    for size in SIZES:
        write_preprocessor_config(config_dir, image_size=size)
        ours = ImageProcessor.from_dir(config_dir)([Image.open(io.BytesIO(data)) for data in files.values()])
        results[size] = (dict(zip(files, ours, strict=True)),
                         dict(zip(files, oracle[f"pre_pixel_values_{size}"], strict=True)))
    return results


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("size", SIZES)
def test_pixel_values_match_transformers(processed, size, name):
    ours, theirs = (values[name] for values in processed[size])
    assert ours.shape == theirs.shape == (3, size, size)
    assert len(np.unique(theirs)) > 20  # a picture, not a flat colour
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ONE_LEVEL * 1.01,
                               err_msg=f"{name} at {size} px: preprocessing differs from transformers' Janus")
