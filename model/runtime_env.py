"""Process environment that Paddle and PaddleNLP read at import time.

Must run before the first `import paddle`: Paddle pins OMP_NUM_THREADS=1 when it is unset, MKL picks a slow code
path on AMD CPUs unless told otherwise, and PaddleNLP writes to its home folder and may try a hub at import.
Values already set by the user win.
"""

from __future__ import annotations

import os
from pathlib import Path


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
