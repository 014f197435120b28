"""Call the transformers reference oracle (hf_janus_oracle.py) from the Paddle side.

The oracle needs torch and a transformers release whose pins clash with paddlenlp's, so it lives in its own
virtual environment (tests/oracle/setup_venv.sh) and is reached through a subprocess and .npz files. This module
imports neither torch nor paddle.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ORACLE_SCRIPT = Path(__file__).resolve().with_name("hf_janus_oracle.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-oracle"
ENV_PYTHON = "JANUS_ORACLE_PYTHON"


class OracleFailed(RuntimeError):
    """The oracle could not be run, or exited with an error (its stderr is in the message)."""


def oracle_python() -> Path | None:
    """The oracle venv's interpreter: `$JANUS_ORACLE_PYTHON` if set, else `.venv-oracle` in the repo root."""
    configured = os.environ.get(ENV_PYTHON)
    candidate = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def run_oracle(checkpoint_dir: str | Path, requests: dict[str, np.ndarray],
               timeout: float = 900.0) -> dict[str, np.ndarray]:
    """Run the oracle on `requests` (see hf_janus_oracle.py for the keys) and return its outputs."""
    python = oracle_python()
    if python is None:
        raise OracleFailed(f"no oracle interpreter: run tests/oracle/setup_venv.sh or set ${ENV_PYTHON}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # Paddle-side settings such as PYTHONPATH must not leak into the other interpreter.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    with tempfile.TemporaryDirectory(prefix="janus-oracle-") as tmp:
        request_path, out_path = Path(tmp) / "requests.npz", Path(tmp) / "out.npz"
        np.savez(request_path, **{key: np.asarray(value) for key, value in requests.items()})
        command = [str(python), str(ORACLE_SCRIPT), "--checkpoint", str(Path(checkpoint_dir).resolve()),
                   "--requests", str(request_path), "--out", str(out_path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as err:
            raise OracleFailed(f"oracle timed out after {timeout:.0f} s\n{_text(err.stderr)}") from None
        if done.returncode != 0:
            raise OracleFailed(f"oracle exited with status {done.returncode}:\n{done.stderr.strip()}")
        with np.load(out_path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}


def _text(stream: bytes | str | None) -> str:
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream
