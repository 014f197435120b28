"""The prefix cache and the paged KV pool: the same workloads through an engine with the cache on and one with it
off (JANUS_PREFIX_CACHE), side by side in one run, on the same weights.

    python -m bench.prefix_cache [--shape bench|1B] [--dir DIR]

- second question about the same image: time to first token of the second against the first;
- a six-turn conversation about one image: prompt tokens computed and total time;
- 16 requests at once, four images with four questions each: throughput;
- requests with nothing in common (another image and system prompt each): throughput;
- KV memory of a mixed load (generations and understanding requests): peak blocks in use against the fixed
  reservation of the previous design (JANUS_MAX_ROWS x JANUS_MAX_SEQ_LEN = 32 x 1024 positions).

The last line is one JSON object. Engines run in this process (no HTTP): what is measured is the engine. With
`--before PATH` (an older checkout) the unrelated requests also go over HTTP to a server of each checkout, taking
turns (before, after, before, after), both with JANUS_MAX_ROWS=32 and JANUS_MAX_SEQ_LEN=1024.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import model  # noqa: F401
from model.runtime_env import cache_root

OLD_ROWS, OLD_SEQ_LEN = 32, 1024  # the fixed KV reservation of the previous design's defaults


def _picture(seed: int, size: int = 384):
    from PIL import Image

    rng = np.random.default_rng(seed)  # smooth noise: photo-like, not a flat colour
    coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


class Bench:
    def __init__(self, janus, directory: Path, prefix_cache: bool, kv_cache_mb: int) -> None:
        from service.engine import Engine, EngineConfig
        from service.processing import Preprocessor

        self.engine = Engine(janus, EngineConfig(max_rows=32, max_waiting=64, prefix_cache=prefix_cache,
                                                 kv_cache_mb=kv_cache_mb, feature_cache_mb=256 if prefix_cache else 0,
                                                 default_timeout_s=7200))
        self.engine.start()
        self.engine.warmup()
        self.prep = Preprocessor.from_dir(directory, janus.cfg, self.engine.max_seq_len,
                                          capacity=self.engine.capacity)

    def close(self) -> None:
        self.engine.shutdown(drain_timeout_s=0)

    def params(self, question: str, picture, system: str | None = None, history=(), max_new_tokens: int = 16,
               seed: int = 0):
        params = self.prep.understand(question, [picture] if picture is not None else [], system_prompt=system,
                                      max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=seed,
                                      timeout_s=None, history=list(history))
        params.stop_ids = ()  # random weights: run every answer to its length
        return params

    async def ask(self, params) -> tuple[float, float, object]:
        """(time to first token, total time, result) of one request."""
        from service.engine.types import ErrorEvent, FinishedEvent, TokenEvent

        started = time.perf_counter()
        first = None
        handle = self.engine.submit(params)
        async for event in handle.events():
            if isinstance(event, TokenEvent) and first is None:
                first = time.perf_counter() - started
            if isinstance(event, FinishedEvent):
                return first or 0.0, time.perf_counter() - started, event.result
            if isinstance(event, ErrorEvent):
                raise event.error
        raise RuntimeError("no result")


def second_question(bench: Bench, seed: int) -> dict:
    picture = _picture(seed)
    first = asyncio.run(bench.ask(bench.params("What is in this picture?", picture, max_new_tokens=4)))
    second = asyncio.run(bench.ask(bench.params("What colours does it have?", picture, max_new_tokens=4)))
    return {"ttft_first_s": first[0], "ttft_second_s": second[0], "second_over_first": second[0] / first[0],
            "second_cached_tokens": second[2].cached_tokens, "prompt_tokens": second[2].prompt_tokens}


def conversation(bench: Bench, seed: int, turns: int = 6) -> dict:
    picture, history, computed, prompt_total = _picture(seed), [], 0, 0
    started = time.perf_counter()
    for turn in range(turns):
        # the picture goes with the first question and stays there (the history keeps its tag); each turn sends
        # the whole conversation, answers as the client read them (decoded text)
        question = ("<image_placeholder>\n" if turn == 0 else "") + f"Question {turn + 1}: what else is in it?"
        _, _, result = asyncio.run(bench.ask(bench.params(question, picture, history=history, max_new_tokens=24)))
        computed += result.prompt_tokens - result.cached_tokens
        prompt_total += result.prompt_tokens
        history.append((question, bench.prep.decode(result.token_ids)))
    return {"turns": turns, "prompt_tokens": prompt_total, "computed_tokens": computed,
            "computed_share": computed / prompt_total, "total_s": time.perf_counter() - started}


def concurrent(bench: Bench, seed: int, images: int = 4, questions: int = 4) -> dict:
    pictures = [_picture(seed + i) for i in range(images)]
    params = [bench.params(f"Question {q}: describe part {q} of the picture.", pictures[i], seed=q)
              for q in range(questions) for i in range(images)]

    async def all_at_once():
        return await asyncio.gather(*(bench.ask(p) for p in params))

    started = time.perf_counter()
    results = asyncio.run(all_at_once())
    wall = time.perf_counter() - started
    return {"requests": len(params), "wall_s": wall, "requests_per_s": len(params) / wall,
            "cached_tokens": sum(r[2].cached_tokens for r in results)}


def unrelated(bench: Bench, seed: int, count: int = 8) -> dict:
    params = [bench.params("Describe it.", _picture(seed + i), system=f"You are assistant number {seed + i}.",
                           seed=i) for i in range(count)]

    async def in_fours():
        out = []
        for start in range(0, count, 4):
            out += await asyncio.gather(*(bench.ask(p) for p in params[start:start + 4]))
        return out

    started = time.perf_counter()
    results = asyncio.run(in_fours())
    wall = time.perf_counter() - started
    return {"requests": count, "wall_s": wall, "requests_per_s": count / wall,
            "cached_tokens": sum(r[2].cached_tokens for r in results)}


def unrelated_http(directory: Path, before: Path, rounds: int = 2, count: int = 8) -> dict:
    """Unrelated /understand requests (4 at a time) against a server of the older checkout and one of this one."""
    import base64
    import io

    import httpx

    from bench.service_load import running_server

    def body(i: int) -> bytes:
        png = io.BytesIO()
        _picture(500 + i).save(png, format="PNG")
        return json.dumps({"question": "Describe it.", "images": [base64.b64encode(png.getvalue()).decode()],
                           "system_prompt": f"You are assistant number {i}.", "max_new_tokens": 16,
                           "seed": i}).encode()

    bodies = [body(i) for i in range(count)]

    async def drive(base: str) -> float:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            started = time.perf_counter()
            for start in range(0, count, 4):
                replies = await asyncio.gather(*(client.post("/understand", content=b,
                                                             headers={"content-type": "application/json"})
                                                 for b in bodies[start:start + 4]))
                assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
            return time.perf_counter() - started

    walls: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for label, source in (("before", before), ("after", None)):
                with running_server(directory, 32, 1024, Path(tmp) / f"{label}.log", source) as base:
                    asyncio.run(drive(base))  # warm: first requests of a fresh server pay one-off costs
                    walls[label].append(asyncio.run(drive(base)))
    before_s, after_s = float(np.median(walls["before"])), float(np.median(walls["after"]))
    return {"requests": count, "before_wall_s": walls["before"], "after_wall_s": walls["after"],
            "after_over_before": after_s / before_s}


def mixed_memory(bench: Bench, seed: int) -> dict:
    """Peak KV blocks in use while 2 generations (parallel_size 2, guided) and 8 understanding requests run."""
    engine = bench.engine
    peak, done = 0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, engine.blocks.used)
            time.sleep(0.005)

    generations = [bench.prep.generate(f"a lighthouse number {i}", parallel_size=2, cfg_weight=5.0, temperature=1.0,
                                       seed=i, timeout_s=None) for i in range(2)]
    questions = [bench.params("Describe it.", _picture(seed + i), max_new_tokens=32, seed=i) for i in range(8)]

    async def load():
        handles = [engine.submit(p) for p in [*generations, *questions]]
        return await asyncio.gather(*(h.result() for h in handles))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    asyncio.run(load())
    done.set()
    watcher.join()
    position_bytes = engine.block_bytes // engine.config.block_size
    return {"peak_blocks": peak, "block_size": engine.config.block_size,
            "peak_kv_mib": peak * engine.block_bytes / 2**20,
            "fixed_reservation_mib": OLD_ROWS * OLD_SEQ_LEN * position_bytes / 2**20,
            "peak_over_fixed": peak * engine.block_bytes / (OLD_ROWS * OLD_SEQ_LEN * position_bytes),
            "pool_mib": engine.blocks.num_blocks * engine.block_bytes / 2**20}


def main() -> None:
    import paddle

    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import build_tiny_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["bench", "1B"], default="bench")
    parser.add_argument("--dir", type=Path, default=None, help="where the 1B-shape checkpoint is (built if absent)")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out (1B: conversation concurrent ...)")
    parser.add_argument("--kv-cache-mb", type=int, default=8192, help="the engines' KV pool (JANUS_KV_CACHE_MB)")
    parser.add_argument("--before", type=Path, default=None, help="an older checkout for the HTTP comparison")
    parser.add_argument("--concurrent", type=int, nargs=2, default=[4, 4], metavar=("IMAGES", "QUESTIONS"),
                        help="images x questions sent at once")
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    if args.shape == "bench":
        directory = cache_root() / "bench-checkpoint-bench"
        if not (directory / "config.json").exists():
            build_tiny_checkpoint(directory, preset="bench", seed=7)
        janus, _ = load_janus(directory)
    else:
        from bench.big_checkpoint import build

        directory = build(args.dir or Path(tempfile.gettempdir()) / "janus-1b-random-bin", "1B")
        janus, _ = load_janus(directory, cache_dir=Path(tempfile.gettempdir()) / "janus-bench-cache")
    images, questions = args.concurrent
    parts = {"second_question": second_question, "conversation": conversation,
             "concurrent": functools.partial(concurrent, images=images, questions=questions),
             "unrelated": unrelated, "mixed_memory": mixed_memory}
    report: dict = {"shape": args.shape}
    for name, part in parts.items():
        if name in args.skip:
            continue
        report[name] = {}
        # off, then on, then off and on again: each engine starts with empty caches for each part
        for round_ in range(2 if args.shape == "bench" else 1):
            for label, cache in (("off", False), ("on", True)):
                bench = Bench(janus, directory, cache, args.kv_cache_mb)
                try:
                    result = part(bench, seed=100 * round_ + 1)
                finally:
                    bench.close()
                report[name].setdefault(label, []).append(result)
        print(json.dumps({name: report[name]}), flush=True)
    if args.before is not None:
        report["unrelated_http"] = unrelated_http(directory, args.before)
        print(json.dumps({"unrelated_http": report["unrelated_http"]}), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
