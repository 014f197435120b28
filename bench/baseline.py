"""The baseline: the model package's one-request reference loops, serving requests one after another.

It does the same work per request as the service (image decoding and preprocessing, tokenization, the model,
VQ decoding, JPEG encoding, detokenization), through `model.reference` instead of the engine.
"""

from __future__ import annotations

import io
import time

import numpy as np
import paddle
from PIL import Image

from bench.workload import GenerateJob, UnderstandJob
from model import reference
from model.janus import JanusModel
from service.processing import Preprocessor


def run_generate(model: JanusModel, prep: Preprocessor, jobs: list[GenerateJob]) -> list[float]:
    latencies = []
    for job in jobs:
        started = time.perf_counter()
        params = prep.generate(job.prompt, parallel_size=job.parallel_size, cfg_weight=job.cfg_weight,
                               temperature=job.temperature, seed=job.seed, timeout_s=None)
        tokens = reference.generate(model, np.array(params.prompt_ids), params.pad_id, params.parallel_size,
                                    params.cfg_weight, params.temperature, params.seed)
        with paddle.no_grad():
            images = model.decode_images(paddle.to_tensor(tokens))
        for image in images:
            Image.fromarray(image).save(io.BytesIO(), format="JPEG", quality=90)
        latencies.append(time.perf_counter() - started)
    return latencies


def run_understand(model: JanusModel, prep: Preprocessor, jobs: list[UnderstandJob]) -> list[float]:
    latencies = []
    for job in jobs:
        started = time.perf_counter()
        image = Image.open(io.BytesIO(job.image_png))
        image.load()
        params = prep.understand(job.question, [image], system_prompt=None, max_new_tokens=job.max_new_tokens,
                                 temperature=0.0, top_p=1.0, seed=job.seed, timeout_s=None)
        ids = reference.understand(model, np.array(params.prompt_ids), params.pixel_values, params.image_id,
                                   params.stop_ids[0], params.max_new_tokens, 0.0, 1.0, params.seed)
        prep.decode(ids)
        latencies.append(time.perf_counter() - started)
    return latencies
