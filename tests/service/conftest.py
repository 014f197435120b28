"""Servers for the API tests: the real engine over the real tiny Paddle model, behind a real uvicorn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.helpers import LiveServer, start_server, test_settings


@pytest.fixture(scope="session")
def server(tiny_dir: Path):
    """One shared server with roomy limits, for tests that do not depend on its configuration."""
    live = start_server(test_settings(tiny_dir))
    yield live
    live.stop()


@pytest.fixture
def make_server(tiny_dir: Path):
    """A server of its own with some settings changed; stopped after the test."""
    started: list[LiveServer] = []

    def build(**overrides) -> LiveServer:
        live = start_server(test_settings(tiny_dir, **overrides))
        started.append(live)
        return live

    yield build
    for live in started:
        live.stop()


@pytest.fixture
def client(server: LiveServer):
    with server.client() as http:
        yield http
