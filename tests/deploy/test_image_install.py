"""The CPU image's install path, replayed without a Docker engine: the files its COPY lines take, its install RUN line
into a fresh virtual environment (not the developer's), then its entry point with its ENV, a read-only home folder
and a writable cache, until /ready answers. A runtime dependency missing from the lock, a file the image forgets to
copy, or a write outside the cache directory fails here instead of in a user's deployment.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
from dockerfile_parse import DockerfileParser
from packaging.utils import canonicalize_name

from tests.deploy.readonly import can_mount_read_only, with_read_only

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"


def _parsed() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def _instructions(name: str) -> list[str]:
    return [i["value"] for i in _parsed().structure if i["instruction"] == name]


def _replay_copies(workdir: Path) -> None:
    """The COPY lines of the Dockerfile, into `workdir` (the image's WORKDIR), with Docker's rules for targets."""
    for value in _instructions("COPY"):
        words = [w for w in value.split() if not w.startswith("--")]
        *sources, target = words
        destination = workdir / target
        into_folder = target.endswith("/") or len(sources) > 1
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():  # a folder's contents go to the target
                shutil.copytree(origin, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                copy_to = destination / origin.name if into_folder else destination
                copy_to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, copy_to)


def _install_command(venv: Path) -> str:
    """The image's install RUN line, pointed at `venv` instead of /opt/venv and at the machine's own uv copy and
    download cache (hard links rather than the image's copies: the same files, in seconds)."""
    runs = [v for v in _instructions("RUN") if ".ci/install" in v]
    assert len(runs) == 1, runs
    command = re.sub(r"^(\s*--\S+\s+)+", "", runs[0])  # RUN's own options (--mount=type=cache,...)
    command = command.replace("/opt/venv", str(venv))
    command = command.replace("UV_LINK_MODE=copy", "UV_LINK_MODE=hardlink")
    tools = os.environ.get("JANUS_TOOLS_DIR", str(ROOT / ".cache" / "tools"))
    return command.replace("JANUS_TOOLS_DIR=/tmp/janus-tools", f"JANUS_TOOLS_DIR={shlex.quote(tools)}").replace(
        "rm -rf /tmp/janus-tools", "true")


def _clean_env() -> dict[str, str]:
    """What a build step sees: no virtual environment, no PYTHONPATH into the checkout, no JANUS_* settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("JANUS_")}


def _ready(http: httpx.Client) -> bool:
    try:
        return http.get("/ready").status_code == 200
    except httpx.TransportError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {canonicalize_name(p["name"]): p["version"] for p in lock["package"]}


def test_cpu_image_install_path_serves_from_a_fresh_venv(tmp_path):
    workdir = tmp_path / "opt" / "janus-serve"
    workdir.mkdir(parents=True)
    _replay_copies(workdir)
    venv = tmp_path / "venv"
    install = subprocess.run(["bash", "-c", f"set -e; {_install_command(venv)}"], cwd=workdir, env=_clean_env(),
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-4000:]

    # exactly the lock's versions, the runtime and cpu extra only
    listed = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import importlib.metadata as m, json; "
                             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
                            capture_output=True, text=True, check=True, env=_clean_env())
    installed = {canonicalize_name(k): v for k, v in json.loads(listed.stdout).items()}
    locked = _locked_versions()
    assert {"paddlepaddle", "paddlenlp", "fastapi", "uvicorn", "janus-serve"} <= set(installed)
    assert not {"pytest", "schemathesis", "ruff"} & set(installed)  # --no-test-extras
    wrong = {name: (version, locked[name]) for name, version in installed.items()
             if name in locked and locked[name] != version}
    assert wrong == {}
    assert set(installed) - set(locked) <= {"pip", "setuptools"}  # what `python -m venv` itself brings

    # the entry point with the image's environment; the home folder read-only as in a --read-only container
    env = _clean_env()
    env.update(_parsed().envs)
    port = _free_port()
    home, cache = tmp_path / "home", tmp_path / "cache"
    env.update(PATH=f"{venv / 'bin'}:{os.environ['PATH']}", HOME=str(home), JANUS_HOST="127.0.0.1",
               JANUS_PORT=str(port), JANUS_CACHE_DIR=str(cache))
    env.pop("TMPDIR", None)
    entrypoint = json.loads(_instructions("ENTRYPOINT")[-1])
    entrypoint[0] = entrypoint[0].replace("/opt/venv", str(venv))
    command = with_read_only([home], entrypoint) if can_mount_read_only() else entrypoint
    log = tmp_path / "server.log"
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            # bounded (a server that never gets ready fails the test), and gentle: twice a second
            for _ in range(1200):
                if _ready(http) or server.poll() is not None:
                    break
                time.sleep(0.5)
            assert server.poll() is None, log.read_text()[-4000:]
            ready = http.get("/ready")
            assert ready.status_code == 200, log.read_text()[-4000:]
            assert ready.json()["random_weights"] is False  # the built-in demo model, trained on shapes
            info = http.get("/info").json()
            assert info["device"] == "cpu" and info["dtype"] == "float32"
            assert info["description"] == "a small demo model trained on synthetic shapes, not Janus-Pro"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    assert "Traceback" not in text and "Read-only file system" not in text, text[-4000:]
    assert "fused CPU kernels loaded" in text  # the compiler's temporary files found a writable place
    # Paddle's own folder (created at import, under the home folder) went into the cache
    assert (cache / "home" / ".cache" / "paddle").is_dir()
    assert not any(home.iterdir())
