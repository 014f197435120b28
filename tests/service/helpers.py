"""Test helpers: a real uvicorn server on 127.0.0.1 in a background thread, SSE parsing, test images."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

from service.api.app import build_app
from service.runtime import Runtime
from service.settings import Settings


def test_settings(model_dir: Path, **overrides: Any) -> Settings:
    """Explicit values for everything a developer's environment might set differently."""
    values: dict[str, Any] = {
        "model_dir": model_dir, "device": "cpu", "dtype": "float32", "api_key": None, "chat_template": None,
        "max_rows": 16, "max_seq_len": 512, "max_waiting": 16, "progress_every": 4, "request_timeout_s": 120.0,
        "drain_timeout_s": 5.0, "max_body_bytes": 4 * 1024 * 1024, "max_image_bytes": 1024 * 1024,
        "max_image_pixels": 4_000_000, "log_level": "info",
    }
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # a helper, not a test, wherever it is imported


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll until `condition()` holds; the bound only keeps a broken server from hanging the suite."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.01)


@dataclass
class LiveServer:
    url: str
    runtime: Runtime
    server: uvicorn.Server
    thread: threading.Thread
    gates: list[EngineGate | DecodeGate] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def gate(self) -> EngineGate:
        """Hold the engine inside its next step (released on stop at the latest)."""
        gate = EngineGate(self.runtime)
        self.gates.append(gate)
        return gate

    def decode_gate(self, fails: Callable[[np.ndarray], bool] | None = None) -> DecodeGate:
        """Hold the VQ decoder inside its next call (released on stop at the latest)."""
        gate = DecodeGate(self.runtime.engine, fails)
        self.gates.append(gate)
        return gate

    def metric(self, name: str, **labels: str) -> float:
        value = self.runtime.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def stop(self) -> None:
        for gate in self.gates:
            gate.release()
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(settings: Settings) -> LiveServer:
    runtime = Runtime.load(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(build_app(runtime), log_config=None, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    live = LiveServer(url, runtime, server, thread)
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    assert thread.is_alive(), "uvicorn exited during start-up"
    # The lifespan has started the engine by now: a dead engine thread means start-up failed (see the log).
    wait_until(lambda: _ready(url) or not runtime.engine.alive, "/ready to answer 200")
    if not runtime.engine.alive:
        live.stop()
        raise AssertionError("the engine thread died during start-up")
    return live


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


class EngineGate:
    """Holds the engine thread inside its next step until released: makes "a request is running" a fact, not a race.

    Uses the engine's fault hook, which runs in the engine thread once per running request per step. After the
    release it keeps recording what was running at each call.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.engine = runtime.engine
        self._open = threading.Event()
        self.seen: list[Any] = []  # engine-side request states that reached the gate
        self.running: list[dict[str, int]] = []  # engine stats at each call after the release
        self.engine.fault_hook = self._hook

    def _hook(self, request: Any) -> None:
        if not self._open.is_set():
            self.seen.append(request)
            self._open.wait()
        else:
            self.running.append(self.engine.stats())

    def release(self) -> None:
        self._open.set()


class DecodeGate:
    """Holds the image decoding of generated tokens inside its next call until released, and fails the calls that
    `fails(tokens)` picks: wraps the runner's `decode_images`, the call that runs the VQ decoder, so that "a request's
    images are being decoded" is a fact, not a race. Once open, calls go through to the real decoder.
    """

    def __init__(self, engine: Any, fails: Callable[[np.ndarray], bool] | None = None) -> None:
        self.runner = engine.runner
        self._decode = self.runner.decode_images
        self._fails = fails
        self._open = threading.Event()
        self.entered = threading.Event()  # a decode call has begun
        self.calls: list[np.ndarray] = []  # the token grids of every call, in order
        self.threads: list[str] = []  # the thread each call ran in
        self.runner.decode_images = self._gated

    def _gated(self, tokens: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(tokens))
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        self._open.wait()
        if self._fails is not None and self._fails(tokens):
            raise RuntimeError("injected decode failure")
        return self._decode(tokens)

    def release(self) -> None:
        self._open.set()


def plain_decode(engine: Any, tokens: np.ndarray) -> np.ndarray:
    """The model's own `decode_images`, called directly (outside the engine), in a thread with the budget the
    engine's image decoder has beside running requests (the pixels do not depend on it: an independent decode)."""
    import paddle

    from service.engine.cpu_threads import set_thread_budget

    out: list[np.ndarray] = []

    def decode() -> None:
        paddle.set_grad_enabled(False)
        set_thread_budget(engine.decode_threads)
        out.append(engine.model.decode_images(paddle.to_tensor(tokens)))

    thread = threading.Thread(target=decode)  # a thread of its own: the caller's budget stays as it was
    thread.start()
    thread.join()
    assert out, "decoding failed (see the log)"
    return out[0]


@dataclass
class SSEEvent:
    event: str
    data: dict[str, Any]


def sse_events(lines: Iterator[str]) -> Iterator[SSEEvent]:
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(event, json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].strip())


def image_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGB", fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = rgb if mode == "RGB" else rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_b64_image(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


@contextmanager
def rows_held_by_a_generation(live: LiveServer, start: Callable[[], None], timeout_s: float) -> Iterator[None]:
    """Run `start` (a generation request taking the rows) on a thread, hold the engine once it has drawn one image
    token, and wait until its remaining steps would outlast a newcomer's `timeout_s`; on leaving, let it finish."""
    engine = live.runtime.engine
    steps = live.runtime.info.output_image_tokens
    held, release = threading.Event(), threading.Event()

    def hold_after_the_first_image_token(request: Any) -> None:
        if request.steps_done >= 1 and not release.is_set():
            held.set()
            release.wait()

    engine.fault_hook = hold_after_the_first_image_token
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        wait_until(held.is_set, "the first request to hold its rows after one image token")
        # One step of `steps` took at least this long by now, so the rest takes longer than the newcomer's timeout.
        time.sleep(1.5 * timeout_s / (steps - 1))
        yield
    finally:
        release.set()
        thread.join(60)


def post_in_background(live: LiveServer, path: str, payload: dict) -> tuple[threading.Thread, dict]:
    """POST on a thread of its own; `out["reply"]` holds the response once the thread has ended."""
    out: dict = {}

    def send() -> None:
        with live.client() as http:
            out["reply"] = http.post(path, json=payload)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, out


def run_in_one_batch(
    live: LiveServer, requests: Sequence[tuple[str, dict]]
) -> tuple[list[httpx.Response], list[dict[str, int]]]:
    """Send `(path, payload)` requests so that they run in one engine batch: the first is held inside its first step
    until all the others have queued up behind it, then they are let go together. Returns the replies, in order, and
    the engine's stats at each running request of each step after the release (which rows shared a step)."""
    gate = live.gate()
    sent = [post_in_background(live, *requests[0])]
    wait_until(lambda: gate.seen, "the first request to run")
    sent += [post_in_background(live, path, payload) for path, payload in requests[1:]]
    wait_until(lambda: live.runtime.engine.stats()["waiting"] == len(requests) - 1, "the rest to queue up")
    gate.release()
    for thread, _ in sent:
        thread.join(120)
    return [out["reply"] for _, out in sent], gate.running


def wait_for_decoder_idle(engine) -> None:
    """Until the engine's image decoder has nothing queued or running (at most two minutes)."""
    for _ in range(12000):
        if engine.images.idle:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the image decoder never became idle")
