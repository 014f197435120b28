"""Understanding latency while image generations finish: the demo checkpoint (384 px VQ decoder, seconds per image on
a CPU) behind a real `janus-serve` process, 4 clients sending /understand back to back while one client sends
/generate requests (parallel_size 8) one after another. Also the same /understand load alone, as the floor.

    python -m bench.mixed_load                          # this checkout
    python -m bench.mixed_load --before /path/to/old    # and an older checkout, alternating, in the same run

With `--before` the two servers take turns (before, after, before, ...; never at the same time), so that a machine
that speeds up or slows down during the run moves both alike. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

import model  # noqa: F401
from bench.service_load import JSON_HEADERS, running_server
from bench.workload import GenerateJob, understand_jobs
from model.tiny_checkpoint import demo_checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
UNDERSTAND_CLIENTS = 4
PARALLEL_SIZE = 8


async def _scenario(base: str, generations: int) -> dict:
    """Understanding clients run until the last generation answered (or, with no generations, for a fixed count)."""
    bodies = [json.dumps(job.body()).encode() for job in understand_jobs(16)]
    latencies: list[float] = []
    generate_latencies: list[float] = []
    done = asyncio.Event()

    async def understand_client(client: httpx.AsyncClient, index: int, count: int | None) -> None:
        sent = 0
        while not done.is_set() and (count is None or sent < count):
            body = bodies[(index + sent * UNDERSTAND_CLIENTS) % len(bodies)]
            started = time.perf_counter()
            reply = await client.post(base + "/understand", content=body, headers=JSON_HEADERS)
            reply.raise_for_status()
            latencies.append(time.perf_counter() - started)
            sent += 1

    async def generate_client(client: httpx.AsyncClient) -> None:
        for i in range(generations):
            body = json.dumps(GenerateJob("a lighthouse at dusk", seed=300 + i, parallel_size=PARALLEL_SIZE).body())
            started = time.perf_counter()
            reply = await client.post(base + "/generate", content=body.encode(), headers=JSON_HEADERS)
            reply.raise_for_status()
            generate_latencies.append(time.perf_counter() - started)
        done.set()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=3600) as client:
        if generations:
            await asyncio.gather(generate_client(client),
                                 *(understand_client(client, i, None) for i in range(UNDERSTAND_CLIENTS)))
        else:
            await asyncio.gather(*(understand_client(client, i, 8) for i in range(UNDERSTAND_CLIENTS)))
    wall_s = time.perf_counter() - started
    out = {"understand_requests": len(latencies), "wall_s": wall_s,
           "understand_p50_s": float(np.percentile(latencies, 50)),
           "understand_p95_s": float(np.percentile(latencies, 95)), "understand_max_s": float(np.max(latencies))}
    if generate_latencies:
        out["generate_mean_s"] = float(np.mean(generate_latencies))
        out["images_per_s"] = generations * PARALLEL_SIZE / wall_s
    return out


def measure(source: Path, generations: int, log: Path) -> dict:
    with running_server(demo_checkpoint_dir(), max_rows=32, max_seq_len=1024, log_path=log, source=source) as base:
        asyncio.run(_scenario(base, 0))  # warm-up: the HTTP path and the understanding kernels
        alone = asyncio.run(_scenario(base, 0))
        mixed = asyncio.run(_scenario(base, generations))
    return {"alone": alone, "mixed": mixed}


def markdown(runs: list[dict]) -> str:
    lines = ["| code | /understand alone p50 / p95 (s) | /understand while /generate runs: p50 / p95 / max (s) | "
             "/understand answered meanwhile (per s) | /generate (parallel_size 8) mean latency (s) | images/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        alone, mixed = run["alone"], run["mixed"]
        lines.append(f"| {run['label']} | {alone['understand_p50_s']:.2f} / {alone['understand_p95_s']:.2f} | "
                     f"{mixed['understand_p50_s']:.2f} / {mixed['understand_p95_s']:.2f} / "
                     f"{mixed['understand_max_s']:.2f} | {mixed['understand_requests']} "
                     f"({mixed['understand_requests'] / mixed['wall_s']:.2f}) | {mixed['generate_mean_s']:.1f} | "
                     f"{mixed['images_per_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="an older checkout to measure in the same run")
    parser.add_argument("--generations", type=int, default=3, help="/generate requests per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each checkout, taking turns")
    args = parser.parse_args()
    sides = ([("before", args.before.resolve())] if args.before else []) + [("after", ROOT)]
    runs = []
    for round_index in range(args.rounds):
        for label, source in sides:
            log = Path(tempfile.gettempdir()) / f"janus-mixed-load-{label}-{round_index}.log"
            result = measure(source, args.generations, log)
            result["label"] = label if args.rounds == 1 else f"{label} (round {round_index + 1})"
            print(f"{result['label']}: {json.dumps(result)}", file=sys.stderr, flush=True)
            runs.append(result)
    print(markdown(runs))
    print(json.dumps(runs))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - started:.0f} s", file=sys.stderr)
