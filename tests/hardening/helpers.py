"""Helpers for the hardening tests: the error body check, `janus-serve` subprocesses, engine hooks, request mixes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.service.helpers import b64, image_bytes, wait_until

ROOT = Path(__file__).resolve().parents[2]
ERROR_KEYS = {"type", "message", "status", "details"}


def assert_error_body(reply: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """The one error body: `{"error": {"type", "message", "status", "details"?}}`, as JSON, with this status."""
    assert reply.status_code == status, f"{reply.status_code}: {reply.text[:500]}"
    assert reply.headers["content-type"].startswith("application/json"), reply.headers["content-type"]
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"type", "message", "status"} <= set(error) <= ERROR_KEYS, error
    assert error["status"] == status and isinstance(error["type"], str) and error["message"], error
    if kind is not None:
        assert error["type"] == kind, error
    if "details" in error:
        assert all(set(d) == {"loc", "message"} for d in error["details"]), error
    return error


# requests whose results are compared with their solo runs (fixed seeds; png so the bytes are the pixels)

def understand_request(seed: int, max_new_tokens: int = 6, temperature: float = 0.8) -> dict[str, Any]:
    return {"question": f"What is in picture {seed}?", "images": [b64(image_bytes(seed=seed))],
            "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}


def generate_request(seed: int, parallel_size: int = 1) -> dict[str, Any]:
    return {"prompt": f"a lighthouse number {seed}", "parallel_size": parallel_size, "seed": seed, "format": "png"}


def essence(path: str, body: dict[str, Any]) -> object:
    """What must not change when a request runs among others: the text, or the image bytes."""
    return body["text"] if path == "/understand" else [image["data"] for image in body["images"]]


def send_together(url: str, requests: Sequence[tuple[str, dict[str, Any]]],
                  while_in_flight: Callable[[list[asyncio.Task[httpx.Response]]], Awaitable[None]] | None = None,
                  timeout_s: float = 60.0) -> list[httpx.Response]:
    """POST all requests at once, each on its own connection; `while_in_flight(tasks)` runs meanwhile.

    Bounded: each request by `timeout_s`, the whole lot by three times that, so a hung request fails the test.
    """

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
            tasks = [asyncio.create_task(http.post(path, json=payload)) for path, payload in requests]
            if while_in_flight is not None:
                await while_in_flight(tasks)
            return await asyncio.wait_for(asyncio.gather(*tasks), 3 * timeout_s)

    return asyncio.run(run())


async def poll_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """The asyncio twin of `wait_until`: lets the event loop run requests while waiting."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


# engine hooks (the engine calls its fault hook in its own thread, once per running request per step)

class StepHook:
    """Installed as the engine's fault hook: with `hold`, holds the engine at its first call until `release()`;
    applies `action` to every call after that (an exception there fails that request).

    Records the engine stats at each call after the release, so a test can show that requests shared steps.
    """

    def __init__(self, engine: Any, action: Callable[[Any], None] | None = None, hold: bool = True) -> None:
        self.engine = engine
        self.action = action
        self.held = threading.Event()
        self._open = threading.Event()
        if not hold:
            self._open.set()
        self.stats: list[dict[str, int]] = []
        engine.fault_hook = self

    def __call__(self, request: Any) -> None:
        if not self._open.is_set():
            self.held.set()
            self._open.wait()
        self.stats.append(self.engine.stats())
        if self.action is not None:
            self.action(request)

    def release(self) -> None:
        self._open.set()

    def remove(self) -> None:
        self.release()
        self.engine.fault_hook = None


class AdmissionGate:
    """Keeps the engine from admitting waiting requests until `release()`: everything submitted meanwhile is
    admitted in one go, prefilled in the same step, and (same length) finishes in the same step."""

    def __init__(self, engine: Any) -> None:
        self.scheduler = engine.scheduler
        self._admit = self.scheduler.admit
        self._open = threading.Event()
        self.scheduler.admit = self._gated  # the engine thread looks the method up on the instance

    def _gated(self) -> list[Any]:
        if not self._open.is_set():
            self._open.wait()
        return self._admit()

    def release(self) -> None:
        self._open.set()

    def remove(self) -> None:
        self.release()
        del self.scheduler.admit


# janus-serve processes

@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    handles: list[Any] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def rss_bytes(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def refuses_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return True
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for handle in self.handles:
            handle.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def spawn_server(model_dir: Path, log_dir: Path, *flags: str) -> ServerProcess:
    """Start `python -m service.cli` on a free port and wait until /ready says 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_") or k == "JANUS_CACHE_DIR"}
    log = log_dir / f"server-{port}.log"
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port), "--model-dir",
         str(model_dir), "--dtype", "float32", *flags],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    started = ServerProcess(f"http://127.0.0.1:{port}", port, process, log, [out])
    wait_until(lambda: _ready(started.url) or process.poll() is not None, "the server to be ready", timeout_s=180)
    assert process.poll() is None, started.log_text()
    return started
