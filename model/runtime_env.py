"""Process environment that Paddle and PaddleNLP read at import time.

Must run before the first `import paddle`: Paddle pins OMP_NUM_THREADS=1 when it is unset, MKL picks a slow code
path on AMD CPUs unless told otherwise, and PaddleNLP writes to its home folder and may try a hub at import.
Values already set by the user win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
from pathlib import Path

from model.quiet_imports import quiet_paddle_import

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit


def cache_root() -> Path:
    """Where janus-serve keeps converted weights, the demo checkpoint and PaddleNLP's files."""
    return Path(os.environ.get("JANUS_CACHE_DIR", Path.home() / ".cache" / "janus-serve"))


def apply_runtime_env() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    os.environ.setdefault("AISTUDIO_BOS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PPNLP_HOME", str(cache_root() / "paddlenlp"))
    os.environ.setdefault("PADDLE_HOME", str(cache_root() / "paddle"))  # paddle.hub's downloads
    os.environ.setdefault("GLOG_minloglevel", "2")
    quiet_paddle_import()
    keep_freed_memory()


class CacheDirError(RuntimeError):
    """The cache directory cannot be written: one line that names the setting and what to do."""


def prepare_cache_dir() -> Path:
    """Create the cache directory and prove it writable, before anything else tries to write there."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as err:
        raise CacheDirError(
            f"JANUS_CACHE_DIR={root} is not writable ({err.strerror or err}). janus-serve keeps converted weights, "
            "compiled kernels, the demo checkpoint and Paddle's and PaddleNLP's files there: mount a writable "
            "volume at that path (docker: -v janus-cache:/cache) or set JANUS_CACHE_DIR to a writable folder"
        ) from None
    return root


def keep_writes_in_cache() -> None:
    """Point the process's home and temporary folders into the cache directory (for the server process).

    Paddle creates ~/.cache/paddle at import (falling back to /tmp when the home folder is not writable), and the C
    compiler and upload spooling write temporary files: on a read-only root filesystem the cache directory is the
    one writable place, so every file the server writes lands there. An explicit TMPDIR wins.
    """
    root = cache_root()
    for name, folder in (("HOME", root / "home"), ("TMPDIR", root / "tmp")):
        if name == "TMPDIR" and os.environ.get("TMPDIR"):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    tempfile.tempdir = None  # computed again from TMPDIR on next use


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks up to 32 MiB instead of unmapping them.

    Paddle's CPU allocator hands every tensor to malloc. By default glibc serves blocks above 128 KiB with a fresh
    mmap and unmaps them on free, so every activation of a step page-faults anew: on this kind of workload that
    tripled the time of elementwise ops and softmax. Weights (larger, allocated once) are unaffected.
    """
    if not sys.platform.startswith("linux") or os.environ.get("JANUS_KEEP_MALLOC_DEFAULTS"):
        return
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
