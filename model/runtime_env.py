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
from pathlib import Path

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
    os.environ.setdefault("GLOG_minloglevel", "2")
    keep_freed_memory()


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
