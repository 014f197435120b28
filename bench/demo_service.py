"""The demo checkpoint (what `janus-serve` serves without weights) through HTTP: 8 concurrent /generate requests
(parallel_size 2) against the same 8 sent one after another, and the latency of /understand alone.

    python -m bench.demo_service
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench.service_load import drive, running_server
from bench.workload import generate_jobs, understand_jobs
from model.tiny_checkpoint import demo_checkpoint_dir


def main() -> None:
    directory = demo_checkpoint_dir()
    log = Path(tempfile.gettempdir()) / "janus-demo-bench-server.log"
    with running_server(directory, max_rows=32, max_seq_len=1024, log_path=log) as base:
        drive(base, "/generate", generate_jobs(1), 1)  # warm the HTTP path
        jobs = generate_jobs(8)
        one_by_one = drive(base, "/generate", jobs, 1)
        together = drive(base, "/generate", jobs, 8)
        understand = drive(base, "/understand", understand_jobs(10), 1)
    result = {
        "generate_sequential_images_per_s": 16 / one_by_one["wall_s"],
        "generate_concurrent8_images_per_s": 16 / together["wall_s"],
        "understand_alone_p50_s": float(np.percentile(understand["latencies"], 50)),
    }
    result["generate_concurrency_gain"] = (result["generate_concurrent8_images_per_s"]
                                          / result["generate_sequential_images_per_s"])
    print(json.dumps(result), file=sys.stdout)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - started:.0f} s", file=sys.stderr)
