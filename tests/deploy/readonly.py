"""Read-only folders for the container tests, as `docker run --read-only` makes them: a read-only tmpfs mounted over
a folder inside a private mount namespace (`unshare -m`), so the process under test sees EROFS exactly as in the
container, while nothing changes for the rest of the machine."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest


def can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o ro tmpfs \"$d\" && ! touch \"$d/x\" 2>/dev/null"],
                           capture_output=True)
    return probe.returncode == 0


requires_read_only_mounts = pytest.mark.skipif(
    not can_mount_read_only(), reason="needs root and `unshare -m` to mount a read-only tmpfs (as --read-only does)")


def with_read_only(folders: list[Path], command: list[str]) -> list[str]:
    """`command`, run in a private mount namespace where each folder (created if missing) is empty and read-only."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    mounts = " && ".join(f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(f))}" for f in folders)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]
