"""What streamed previews cost the other requests: `python -m bench.previews [--rounds N]`.

A real `janus-serve` on the demo checkpoint (384 px images, 576 image tokens, a VQ decoder that takes a second or
more per image on this CPU). One client sends understanding requests back to back (the others); meanwhile another
streams generations from /v1/images/generations, alternately with `partial_images` 0 and 3 (alternating, so that
machine drift moves both alike). Printed: the generation's duration with and without previews, the others' latency
while each ran, and the cost of the previews' decoding measured on its own (three one-image decodes). Previews cost
the others no more than their decoding when the others' added latency stays within that decoding time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.service_load import JSON_HEADERS, running_server
from bench.workload import UnderstandJob, test_image

PREVIEWS = 3


def preview_decode_s(model_dir: Path) -> float:
    """Three decodes of one image (what one request's three previews cost), median of three tries."""
    import paddle

    from model.checkpoint.loader import load_janus

    paddle.set_grad_enabled(False)
    model, _ = load_janus(model_dir, "float32")
    tokens = paddle.to_tensor(np.random.default_rng(0).integers(0, model.cfg.gen_vision.image_token_size,
                                                                (1, model.cfg.gen_vision.num_tokens)))
    model.decode_images(tokens)  # warm-up
    tries = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(PREVIEWS):
            model.decode_images(tokens)
        tries.append(time.perf_counter() - started)
    return statistics.median(tries)


async def _round(base: str, partial_images: int, seed: int) -> dict:
    others: list[float] = []
    done = asyncio.Event()
    body = json.dumps(UnderstandJob("What is in this picture?", test_image(seed), seed=seed,
                                    max_new_tokens=8).body()).encode()

    async def understand(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            started = time.perf_counter()
            (await client.post(base + "/understand", content=body, headers=JSON_HEADERS)).raise_for_status()
            others.append(time.perf_counter() - started)

    async def generate(client: httpx.AsyncClient) -> float:
        request = {"prompt": "a lighthouse at dusk", "seed": seed, "cfg_weight": 1, "stream": True,
                   "partial_images": partial_images}
        started = time.perf_counter()
        events = 0
        async with client.stream("POST", base + "/v1/images/generations", json=request) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                events += line.startswith("event: image_generation.")
        assert events == partial_images + 1, events
        return time.perf_counter() - started

    async with httpx.AsyncClient(timeout=3600) as client:
        background = asyncio.create_task(understand(client))
        await asyncio.sleep(1.0)  # the others are running before the generation starts
        generation_s = await generate(client)
        done.set()
        await background
    return {"generation_s": generation_s, "others": others}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="generations of each kind (default 2)")
    args = parser.parse_args()
    from model.tiny_checkpoint import demo_checkpoint_dir

    model_dir = demo_checkpoint_dir()
    decode_s = preview_decode_s(model_dir)
    rounds: dict[int, list[dict]] = {0: [], PREVIEWS: []}
    with tempfile.TemporaryDirectory() as tmp, \
            running_server(model_dir, max_rows=8, max_seq_len=1024, log_path=Path(tmp) / "server.log") as base:
        for i in range(args.rounds):
            for partial_images in (0, PREVIEWS) if i % 2 == 0 else (PREVIEWS, 0):
                rounds[partial_images].append(asyncio.run(_round(base, partial_images, seed=i)))
    for partial_images, results in rounds.items():
        others = [latency for r in results for latency in r["others"]]
        generation_s = statistics.mean(r["generation_s"] for r in results)
        print(f"partial_images {partial_images}: generation {generation_s:.2f} s;"
              f" others (understanding, {len(others)} requests) mean {statistics.mean(others):.3f} s,"
              f" max {max(others):.3f} s")
    print(f"decoding {PREVIEWS} previews of one image on its own: {decode_s:.2f} s")


if __name__ == "__main__":
    main()
