"""The server on a read-only root filesystem: an unwritable cache directory is one clear start-up error, and with a
writable one every file the server writes lands inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.readonly import requires_read_only_mounts, with_read_only

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    return {**env, **extra}


@requires_read_only_mounts
def test_unwritable_cache_directory_is_one_clear_error_naming_the_setting(tmp_path):
    read_only = tmp_path / "ro"
    cache = read_only / "cache"
    done = subprocess.run(with_read_only([read_only], [sys.executable, "-m", "service.cli", "--port", "0"]),
                          cwd=ROOT, env=_env(JANUS_CACHE_DIR=str(cache)), capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"JANUS_CACHE_DIR={cache} is not writable (Read-only file system)" in output
    assert "-v janus-cache:/cache" in output  # says what to do
    assert "Traceback" not in output and "OSError" not in output


def test_a_cache_path_under_a_file_is_refused_the_same_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "service.cli", "--port", "0"], cwd=ROOT,
                          env=_env(JANUS_CACHE_DIR=str(blocker / "cache")), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert f"JANUS_CACHE_DIR={blocker / 'cache'} is not writable" in done.stderr
    assert "Traceback" not in done.stderr
