"""The service side: a real `janus-serve` process on 127.0.0.1, driven over HTTP at a fixed concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.workload import GenerateJob, UnderstandJob

JSON_HEADERS = {"content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, max_rows: int, max_seq_len: int, log_path: Path, source: Path | None = None):
    """A server on a free port; `source`: the checkout whose code it runs (default: whatever `service` imports as)."""
    with server_process(model_dir, max_rows, max_seq_len, log_path, source) as (base, _):
        yield base


@contextmanager
def server_process(model_dir: Path, max_rows: int, max_seq_len: int, log_path: Path, source: Path | None = None,
                   extra_env: dict[str, str] | None = None, ready_timeout_s: float = 300):
    """running_server's (base URL, process), with more environment and a longer start where asked."""
    port = free_port()
    env = dict(os.environ, JANUS_MODEL_DIR=str(model_dir), JANUS_PORT=str(port), JANUS_HOST="127.0.0.1",
               JANUS_MAX_ROWS=str(max_rows), JANUS_MAX_SEQ_LEN=str(max_seq_len), JANUS_MAX_WAITING="256",
               JANUS_LOG_LEVEL="warning", **(extra_env or {}))
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, stdout=log, stderr=log,
                                cwd=source)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError(f"server not ready after {ready_timeout_s:.0f} s; see {log_path}")
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _drive(base: str, route: str, jobs: Sequence[GenerateJob | UnderstandJob], concurrency: int) -> dict:
    # Bodies are serialised before the clock starts: the load generator shares the machine's two cores with the
    # server, and JSON-encoding a 300 KB image per request would be the client's work, not the service's.
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(json.dumps(job.body()).encode())
    latencies: list[float] = []
    server_model_s: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(base + route, content=body, headers=JSON_HEADERS)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            timings = response.json()["timings"]
            server_model_s.append(timings["prefill_s"] + timings["decode_s"])

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=3600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - started, "latencies": latencies, "server_model_s": server_model_s}


def drive(base: str, route: str, jobs: Sequence[GenerateJob | UnderstandJob], concurrency: int) -> dict:
    return asyncio.run(_drive(base, route, jobs, concurrency))
