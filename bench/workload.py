"""The requests both sides of a comparison serve: same prompts, images, seeds and options."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

PROMPTS = ["a red fox in the snow, watercolour", "a lighthouse at dusk", "three green apples on a table",
           "a city street in the rain at night", "a cat sleeping on a blue sofa", "mountains above a calm lake"]
QUESTIONS = ["What is in this picture?", "Describe the colours you see.", "Is there an animal in the image?",
             "What time of day does it look like?"]


@dataclass(frozen=True, slots=True)
class GenerateJob:
    prompt: str
    seed: int
    parallel_size: int = 2
    cfg_weight: float = 5.0
    temperature: float = 1.0

    def body(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "parallel_size": self.parallel_size,
                "cfg_weight": self.cfg_weight, "temperature": self.temperature, "format": "jpeg"}


@dataclass(frozen=True, slots=True)
class UnderstandJob:
    question: str
    image_png: bytes
    seed: int
    max_new_tokens: int = 32

    def body(self) -> dict:
        return {"question": self.question, "images": [base64.b64encode(self.image_png).decode()],
                "max_new_tokens": self.max_new_tokens, "temperature": 0.0, "seed": self.seed}


def test_image(seed: int, size: int = 320) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="PNG")
    return out.getvalue()


def generate_jobs(n: int) -> list[GenerateJob]:
    return [GenerateJob(PROMPTS[i % len(PROMPTS)], seed=100 + i) for i in range(n)]


def understand_jobs(n: int) -> list[UnderstandJob]:
    return [UnderstandJob(QUESTIONS[i % len(QUESTIONS)], test_image(i), seed=200 + i) for i in range(n)]
