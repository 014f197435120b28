"""docker/compose.yaml: the GPU service as compose would start it (no Docker engine needed to check it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
# Read by model/runtime_env.py before Paddle is imported, so not a Settings field.
OUTSIDE_SETTINGS = {"JANUS_CACHE_DIR"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?])?([^}]*)\}")


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert list(services) == ["janus-serve"]
    return services["janus-serve"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's variables with compose's `${NAME:-default}` replaced by the default (what an empty shell gets)."""
    env = service["environment"]
    assert isinstance(env, dict), "environment as a mapping"
    return {name: INTERPOLATION.sub(lambda m: m[2], str(value)) for name, value in env.items()}


def seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_gpu_service_reserves_one_nvidia_gpu(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert environment(service)["JANUS_DEVICE"] == "gpu"


def test_weights_are_mounted_read_only_where_the_service_looks_for_them(service):
    env = environment(service)
    weights = [v for v in service["volumes"] if v["target"] == env["JANUS_MODEL_DIR"]]
    assert len(weights) == 1
    assert weights[0]["read_only"] is True
    # No default: compose refuses to start without a checkpoint folder instead of mounting an empty one.
    assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", weights[0]["source"])


def test_cache_is_a_writable_named_volume(service):
    env = environment(service)
    cache = [v for v in service["volumes"] if v["target"] == env["JANUS_CACHE_DIR"]]
    assert len(cache) == 1
    assert cache[0]["type"] == "volume" and not cache[0].get("read_only", False)
    assert cache[0]["source"] in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_stop_grace_period_outlasts_the_drain_timeout(service):
    drain = float(environment(service)["JANUS_DRAIN_TIMEOUT_S"])
    assert service["stop_signal"] == "SIGTERM"
    assert seconds(service["stop_grace_period"]) >= drain + 10


def test_healthcheck_requests_the_liveness_route_and_waits_for_model_loading(service):
    check = service["healthcheck"]
    assert any("/health" in part for part in check["test"])
    assert seconds(check["start_period"]) >= 600


def test_builds_the_gpu_dockerfile_from_the_repository_top(service):
    context = (COMPOSE.parent / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]) == ROOT / "docker" / "Dockerfile.gpu"


def test_publishes_the_service_port(service):
    assert [str(p).rsplit(":", 1)[-1] for p in service["ports"]] == ["8000"]


def test_every_setting_is_a_known_janus_setting_with_a_valid_default(service):
    env = environment(service)
    assert "JANUS_CACHE_DIR" in (ROOT / "model" / "runtime_env.py").read_text()
    fields = {k: v for k, v in env.items() if k.startswith("JANUS_") and k not in OUTSIDE_SETTINGS}
    names = {name.removeprefix("JANUS_").lower() for name in fields}
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
    values = {k.removeprefix("JANUS_").lower(): v for k, v in fields.items() if v != "" and k != "JANUS_MODEL_DIR"}
    # The CPU-only check in Settings rejects half precision on cpu; validate as the GPU service would run.
    Settings(**values)


def test_api_key_is_taken_from_the_shell_never_written_in_the_file(service):
    assert INTERPOLATION.fullmatch(str(service["environment"]["JANUS_API_KEY"]))
