"""SIGTERM on a `janus-serve` process: stop accepting, let in-flight work finish within the drain time, exit.

The server runs the random-weights demo checkpoint: a generation takes hundreds of steps there (the built-in demo
model draws in 64), so a request is surely still running when the signal arrives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from model.tiny_checkpoint import demo_checkpoint_dir
from tests.service.helpers import sse_events, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def serve(tmp_path):
    """Start `python -m service.cli` with the given flags; yields (url, process, log path)."""
    started: list[subprocess.Popen] = []

    def start(*flags: str) -> tuple[str, subprocess.Popen, Path]:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_") or k == "JANUS_CACHE_DIR"}
        log = tmp_path / f"server-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port), "--max-rows", "4",
             "--progress-every", "8", "--model-dir", str(demo_checkpoint_dir()), *flags],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url) or process.poll() is not None, "the server to be ready", timeout_s=180)
        assert process.poll() is None, log.read_text()
        return url, process, log

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _first_event_then_sigterm(url: str, process: subprocess.Popen, port: int) -> list:
    with httpx.Client(base_url=url, timeout=120) as http, \
            http.stream("POST", "/generate", json={"prompt": "a fox", "cfg_weight": 1, "stream": True}) as reply:
        assert reply.status_code == 200
        events = sse_events(reply.iter_lines())
        first = next(events)
        assert first.event == "progress" and first.data["steps_done"] < first.data["steps_total"]
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: _refuses_connections(port), "the server to stop accepting connections")
        return [first, *events]


def test_sigterm_lets_an_in_flight_stream_finish_then_exits(serve):
    url, process, log = serve("--drain-timeout-s", "120")
    events = _first_event_then_sigterm(url, process, int(url.rsplit(":", 1)[1]))
    assert events[-1].event == "done", events[-1]
    assert len(events[-1].data["images"]) == 1 and events[-1].data["random_weights"] is True
    # uvicorn re-raises the signal once it is done, so the exit is "terminated by SIGTERM" (or 0)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "RANDOM WEIGHTS" in text and "engine stopped" in text and "Traceback" not in text


def test_sigterm_ends_requests_that_outlast_the_drain_time_with_an_error_event(serve):
    url, process, log = serve("--drain-timeout-s", "0.5")
    events = _first_event_then_sigterm(url, process, int(url.rsplit(":", 1)[1]))
    assert events[-1].event == "error", events[-1]
    assert events[-1].data["error"]["status"] == 503 and events[-1].data["error"]["type"] == "unavailable"
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text()
