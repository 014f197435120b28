"""Where the service's step goes, in one process: the engine draws one guided Janus-Pro-1B-shape image (two rows)
with timers around each part of its step, then the bare two-row decode forward (`bench.fullsize.decode_step`) runs
over the same positions the image's steps wrote (a prompt's worth to 576 more), so that neither side is measured
at a context the other never saw.

    python -m bench.step_parts [--tokens 576] [--rounds 2]

The parts: `Scheduler.schedule` and `Scheduler.postprocess` (the engine's bookkeeping), `Runner.forward` (inputs,
the backbone's `extend`, the generation head) and `Runner.sample` (guidance and the draw on the host). The last
line is one JSON object. Needs about 3 GB of memory with bf16 weights; a few minutes of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import model  # noqa: F401  (the thread settings, before paddle)
from bench.big_checkpoint import build
from bench.fullsize import decode_step

PROMPT = 20  # positions of the generation prompt before the first image token (a short prompt)
PARTS = (("scheduler", "schedule"), ("runner", "forward"), ("runner", "sample"), ("scheduler", "postprocess"))


def timed(owner: type, name: str, spent: dict[str, list[float]]) -> None:
    """Wrap owner.name so that every call's seconds go to spent[name]."""
    original: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def service_image(janus, tokens: int) -> tuple[dict[str, list[float]], float]:  # noqa: ANN001
    """The parts' seconds per call and the request's decode seconds (first to last image token)."""
    from service.engine.config import EngineConfig
    from service.engine.engine import Engine
    from service.engine.runner import Runner
    from service.engine.scheduler import Scheduler
    from service.engine.types import GenerateParams

    spent: dict[str, list[float]] = defaultdict(list)
    owners = {"scheduler": Scheduler, "runner": Runner}
    for owner, name in PARTS:
        timed(owners[owner], name, spent)
    engine = Engine(janus, EngineConfig(max_rows=4, max_seq_len=1024))
    engine.start()
    engine.warmup()
    spent.clear()
    params = GenerateParams(prompt_ids=[0, *range(100, 100 + PROMPT - 2), 1], pad_id=2, image_tokens=tokens,
                            cfg_weight=5.0, seed=1)

    async def draw() -> float:
        return (await engine.submit(params, stream=False).result()).timings.decode_s

    decode_s = asyncio.run(draw())
    engine.shutdown(5)
    return spent, decode_s


def bare_steps(janus, tokens: int, rounds: int) -> list[float]:  # noqa: ANN001
    """Seconds of the bare two-row step at every 24th position the image's steps write, `rounds` times over."""
    block = 16
    per_row = -(-(PROMPT + tokens + 1) // block)
    cache = janus.new_cache(2 * per_row, block)
    tables = [list(range(0, per_row)), list(range(per_row, 2 * per_row))]
    decode_step(janus, cache, tables, PROMPT)  # warm-up
    return [decode_step(janus, cache, tables, position) for _ in range(rounds)
            for position in range(PROMPT, PROMPT + tokens, 24)]


def main() -> None:
    import paddle

    from model.checkpoint.loader import load_janus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=576, help="image tokens to draw (576: Janus-Pro's)")
    parser.add_argument("--rounds", type=int, default=2, help="passes of the bare forward over the positions")
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    directory = build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    janus, _ = load_janus(directory, cache_dir=Path(tempfile.gettempdir()) / "janus-bench-cache", keep_bf16=True)
    load_before = os.getloadavg()
    spent, decode_s = service_image(janus, args.tokens)
    bare = bare_steps(janus, args.tokens, args.rounds)
    service_step = decode_s / (args.tokens - 1)  # the first image token comes out of the prefill
    forward_step = statistics.mean(bare)
    parts = {name: {"calls": len(values), "mean_ms": 1000 * statistics.mean(values)}
             for name, values in spent.items() if values}
    print(json.dumps({
        "model": "Janus-Pro-1B shape, random weights, bf16", "tokens": args.tokens,
        "service_step_ms": 1000 * service_step, "bare_forward_ms": 1000 * forward_step,
        "service_over_forward": service_step / forward_step, "parts": parts,
        "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())],
    }))


if __name__ == "__main__":
    main()
