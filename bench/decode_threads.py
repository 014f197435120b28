"""The image decoder's thread budget: how long a generation's images take after its last step through the engine
when the decoder keeps half the cores (before) and when it takes them all while no other request runs (now), and
the Janus-Pro-1B VQ decoder alone at each thread count, with the check that its pixels do not change.

    python -m bench.decode_threads [--rounds 3] [--no-1b]

The engine part serves the demo checkpoint (576 image tokens, 384 px VQ decoder) in this process: each round runs
one generation (one image, guidance) with each budget, taking turns, so that a machine that speeds up or slows down
moves both alike; the figure is the time from the last token to the delivered images (timings: total minus
queue, prefill and token drawing), best round. The 1B part decodes one image of the published VQ decoder
(random weights) in a thread with each budget, also in turns. The machine's load average is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Callable

import numpy as np

import model  # noqa: F401  (runtime environment before paddle)


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def engine_rounds(rounds: int) -> dict[str, float]:
    import paddle

    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import demo_checkpoint_dir
    from model.tokenizer import JanusTokenizer
    from service.engine import Engine, EngineConfig
    from service.engine.types import GenerateParams

    paddle.set_grad_enabled(False)
    janus, _ = load_janus(demo_checkpoint_dir(), cache_dir=False)
    tok = JanusTokenizer.from_dir(demo_checkpoint_dir())
    engine = Engine(janus, EngineConfig(max_rows=4, max_seq_len=1024))
    engine.start()
    engine.warmup()
    assert engine.images is not None and engine.images.threads is not None, "the CPU's threaded image decoder"
    now = engine.images.threads
    budgets: dict[str, Callable[[], int]] = {"half the cores (before)": lambda: engine.decode_threads,
                                             "all cores while alone (now)": now}
    params = GenerateParams(prompt_ids=[tok.bos_id, 11, 12, 13, tok.boi_id], pad_id=tok.pad_id,
                            image_tokens=janus.cfg.gen_vision.num_tokens, seed=1)
    best: dict[str, float] = {}
    images: dict[str, np.ndarray] = {}
    try:
        for round_ in range(rounds + 1):  # the first round warms up
            for name, budget in budgets.items():
                engine.images.threads = budget
                result = asyncio.run(_generate(engine, params))
                t = result.timings
                after = t.total_s - t.queued_s - t.prefill_s - t.decode_s
                images.setdefault(name, result.images)
                if round_:
                    best[name] = min(best.get(name, float("inf")), after)
                print(f"  round {round_} {name:<28} {after:6.2f} s after the last step ({_load()})", flush=True)
    finally:
        engine.images.threads = now
        engine.shutdown(drain_timeout_s=0)
    first, second = images.values()
    best["differing_bytes"] = int((first != second).sum())
    return best


async def _generate(engine, params):  # noqa: ANN001, ANN202
    return await engine.submit(params).result()


def vq_1b_rounds(rounds: int, budgets: list[int]) -> dict[str, float]:
    import paddle

    from bench.vq_decode import build_decoder
    from service.engine.cpu_threads import set_thread_budget

    decoder = build_decoder()
    tokens = paddle.to_tensor(np.random.default_rng(1).integers(0, decoder.cfg.image_token_size,
                                                                 (1, decoder.cfg.grid ** 2)))

    def decode(threads: int) -> tuple[float, np.ndarray]:
        out: list[tuple[float, np.ndarray]] = []

        def run() -> None:
            set_thread_budget(threads)
            with paddle.no_grad():
                started = time.perf_counter()
                pixels = decoder(tokens).numpy()
                out.append((time.perf_counter() - started, pixels))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return out[0]

    best: dict[str, float] = {}
    pixels: dict[int, np.ndarray] = {}
    for round_ in range(rounds + 1):
        for threads in budgets:
            seconds, pixels[threads] = decode(threads)
            if round_:
                best[f"{threads} threads"] = min(best.get(f"{threads} threads", float("inf")), seconds)
            print(f"  round {round_} 1B VQ decoder, {threads} threads: {seconds:6.2f} s ({_load()})", flush=True)
    reference = pixels[budgets[0]]
    best["differing_values"] = int(sum((pixels[t] != reference).sum() for t in budgets))
    return best


def main() -> None:
    from service.engine.cpu_threads import thread_budget

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-1b", action="store_true", help="skip the Janus-Pro-1B VQ decoder")
    args = parser.parse_args()
    cores = thread_budget()
    print(f"demo checkpoint through the engine ({cores} threads in all), {_load()}", flush=True)
    result = {"engine_after_last_step_s": engine_rounds(args.rounds)}
    if not args.no_1b:
        print(f"Janus-Pro-1B VQ decoder alone, {_load()}", flush=True)
        result["vq_1b_s_per_image"] = vq_1b_rounds(args.rounds, sorted({max(1, cores // 2), cores}))
    print(_load())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
