"""One generation request of `parallel_size` 16 (32 rows with guidance, DeepSeek's own example) on the Janus-Pro-1B
shape with bf16 weights, served by `janus-serve` from two checkouts one after the other: the time per image.

    python -m bench.parallel_images --before PATH [--after PATH] [--dir DIR] [--parallel 16]

Each checkout's server starts on the same random checkpoint (`bench.big_checkpoint`, converted once into a shared
cache), answers one request on `POST /generate/stream`, and stops; only one server runs at a time (32 rows of 576
image positions hold about 7 GiB of KV blocks). Timed from the request: its first progress event (the prompt
prefilled), its `decoding` event (all 576 steps done), its `done` event (the images decoded and encoded). Prints one
JSON object: per checkout, those times, seconds per step and per image, and the load average around the request.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

import model  # noqa: F401
from bench.big_checkpoint import build
from bench.service_load import server_process
from bench.workload import GenerateJob

ROOT = Path(__file__).resolve().parents[1]
STEPS = 576


def one_request(source: Path, directory: Path, cache: Path, parallel: int, log: Path) -> dict:
    env = {"JANUS_CACHE_DIR": str(cache), "JANUS_DTYPE": "auto", "JANUS_REQUEST_TIMEOUT_S": "7200"}
    with server_process(directory, max_rows=2 * parallel, max_seq_len=640, log_path=log, source=source,
                        extra_env=env, ready_timeout_s=1800) as (base, _):
        body = GenerateJob("a red fox in the snow, watercolour", seed=7, parallel_size=parallel).body()
        load_before = os.getloadavg()[0]
        marks: dict[str, float] = {}
        sent = time.perf_counter()
        with httpx.Client(base_url=base, timeout=7200) as http, http.stream("POST", "/generate/stream",
                                                                            json=body) as reply:
            reply.raise_for_status()
            event, first_steps = "", 0
            for line in reply.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                    if event == "error":
                        raise RuntimeError(f"the request failed; see {log}")
                    marks.setdefault(event, time.perf_counter() - sent)
                elif line.startswith("data: ") and event == "progress" and not first_steps:
                    first_steps = json.loads(line.removeprefix("data: "))["steps_done"]
        load_after = os.getloadavg()[0]
    return {"first_progress_s": marks["progress"], "first_progress_steps": first_steps,
            "steps_done_s": marks["decoding"], "done_s": marks["done"],
            "step_s": (marks["decoding"] - marks["progress"]) / (STEPS - first_steps),
            "per_image_s": marks["done"] / parallel, "load_average_before_after": [load_before, load_after]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier revision")
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--dir", type=Path, default=None, help="default: a random 1B checkpoint in the temp folder")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "janus-bench-serve-cache")
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    result = {"parallel_size": args.parallel, "rows": 2 * args.parallel}
    for name, source in (("before", args.before), ("after", args.after)):
        result[name] = one_request(source.resolve(), directory, args.cache, args.parallel,
                                   Path(tempfile.gettempdir()) / f"janus-parallel-images-{name}.log")
    result["after_over_before"] = {key: result["after"][key] / result["before"][key]
                                   for key in ("steps_done_s", "done_s", "per_image_s")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
