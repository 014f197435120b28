"""Servers for the hardening tests: in-process uvicorn servers on the tiny model, and `janus-serve` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hardening.helpers import ServerProcess, spawn_server
from tests.service.conftest import make_server  # noqa: F401  (the same per-test server factory)
from tests.service.helpers import LiveServer, start_server, test_settings


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[LiveServer]:
    """One server per module with the test defaults (16 rows, 16 waiting, 512-token context)."""
    live = start_server(test_settings(tiny_dir))
    yield live
    live.stop()


@pytest.fixture
def server_process(tiny_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`python -m service.cli --model-dir <tiny>` with extra flags; killed after the test if still running."""
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        process = spawn_server(tiny_dir, tmp_path, *flags)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
