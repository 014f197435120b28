"""Build the Paddle network for a checkpoint directory and fill it with the checkpoint's weights."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddlenlp.transformers.model_utils import no_init_weights

from model.checkpoint import keys
from model.checkpoint.errors import CheckpointError
from model.checkpoint.native_cache import load_native, widen_bf16
from model.config import JanusConfig
from model.janus import JanusModel
from model.runtime_env import cache_root

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(slots=True)
class LoadReport:
    seconds: float
    source: str  # "cache", "converted", "converted (not cached)"
    parameters: int
    dtype: str


def build_lazy(cfg: JanusConfig, dtype: str = "float32") -> JanusModel:
    """The network with shapes but no allocated weights (fast even at 7B)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        with no_init_weights(), paddle.LazyGuard():
            return JanusModel(cfg)
    finally:
        paddle.set_default_dtype(previous)


def load_janus(directory: str | Path, dtype: str = "float32",
               cache_dir: Path | None | bool = True) -> tuple[JanusModel, LoadReport]:
    """Load a local checkpoint directory. `cache_dir=True` uses the default cache, `False`/`None` disables it."""
    started = time.perf_counter()
    directory = Path(directory)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(SUPPORTED_DTYPES)}")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if cache_dir is True:
        cache_dir = cache_root() / "converted"
    cfg = JanusConfig.from_file(directory / "config.json")
    model = build_lazy(cfg, dtype)
    params = dict(model.named_parameters())
    expected = {name: list(p.shape) for name, p in params.items()}
    native, source = load_native(directory, expected, keys.transposed_names(model), cache_dir or None,
                                 widen=dtype == "float32")
    for name, param in params.items():
        arr, code = native[name]
        if code == "BF16" and dtype == "bfloat16":
            param.set_value(paddle.to_tensor(arr, dtype="bfloat16"))
            continue
        weights = widen_bf16(arr) if code == "BF16" else arr.astype(np.float32, copy=False)
        param.set_value(weights if dtype == "float32" else paddle.to_tensor(weights).astype(dtype))
    model.eval()
    report = LoadReport(time.perf_counter() - started, source, sum(int(np.prod(s)) for s in expected.values()),
                        dtype)
    log.info("loaded %s (%d parameters, %s) in %.2f s from %s", directory, report.parameters, dtype,
             report.seconds, source)
    return model, report
