"""What the service adds to a step: one Janus-Pro-1B-shape image with guidance (two rows) through HTTP, its time per
step beside the bare two-row decode forward's (`bench.fullsize`, same weights, same mean context), in one run.

    python -m bench.step_overhead [--source CHECKOUT] [--weights bfloat16|float32]

The 1B shape needs about 3 GB of memory with bf16 weights and minutes of CPU; the forward and the server run one
after the other, never together. The service's step is its decode time over its decode steps (the first image token
comes out of the prefill); the forward's is the median of `--steps` steps at the mean position of a 576-token image
after a short prompt. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import model  # noqa: F401
from bench.big_checkpoint import build
from bench.service_load import JSON_HEADERS, server_process

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TOKENS = 576
MEAN_CONTEXT = 300  # a ~20-token prompt plus half of the 576 image tokens


def forward_step_s(directory: Path, weights: str, steps: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.fullsize", "--dir", str(directory), "--weights", weights,
                          "--rows", "2", "--context", str(MEAN_CONTEXT), "--steps", str(steps), "--prefills", "1"],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])["decode"]["2"]["step_s"]


def service_step_s(directory: Path, weights: str, source: Path | None) -> dict:
    log = Path(tempfile.gettempdir()) / "janus-step-overhead-server.log"
    env = {"JANUS_DTYPE": "auto" if weights == "bfloat16" else "float32"}
    with server_process(directory, max_rows=4, max_seq_len=1024, log_path=log, source=source, extra_env=env,
                        ready_timeout_s=1800) as (base, _):
        body = {"prompt": "a lighthouse at dusk", "parallel_size": 1, "cfg_weight": 5.0, "seed": 1, "format": "png"}
        started = time.perf_counter()
        reply = httpx.post(base + "/generate", content=json.dumps(body).encode(), headers=JSON_HEADERS, timeout=3600)
        reply.raise_for_status()
        timings = reply.json()["timings"]
    return {"step_s": timings["decode_s"] / (IMAGE_TOKENS - 1), "decode_s": timings["decode_s"],
            "prefill_s": timings["prefill_s"], "request_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="the checkout whose server to measure (default: this one)")
    parser.add_argument("--weights", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--steps", type=int, default=20, help="forward steps to time")
    args = parser.parse_args()
    directory = build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    forward = forward_step_s(directory, args.weights, args.steps)
    service = service_step_s(directory, args.weights, args.source.resolve() if args.source else None)
    print(json.dumps({"model": "Janus-Pro-1B shape, random weights", "weights": args.weights,
                      "forward_step_s": forward, "service": service,
                      "service_over_forward": service["step_s"] / forward}))


if __name__ == "__main__":
    main()
