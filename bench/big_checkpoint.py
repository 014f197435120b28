"""A random checkpoint with the published Janus-Pro-1B (or 7B) architecture, written like the published files.

bf16 weights under the published key names: `pytorch_model.bin` (when an interpreter with torch is given, as the
real Janus-Pro-1B ships) or `model.safetensors`; `build_sharded` writes `.bin` shards and their index, as
Janus-Pro-7B ships. Cheap random values: the point is size and layout, not quality.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from model.checkpoint import keys
from model.checkpoint.loader import build_lazy
from model.config import published_config
from model.tiny_checkpoint import vq_encoder_shapes, write_weights
from model.tokenizer_builder import build_tiny_tokenizer, write_preprocessor_config, write_processor_config

TOOLS = Path(__file__).resolve().parents[1] / "tests" / "tools"


def published_shapes(size: str) -> tuple[dict, dict[str, list[int]]]:
    """(config.json contents, checkpoint key -> shape) of the published architecture."""
    cfg = published_config(size)
    cfg.language.vocab_size = 102400
    model = build_lazy(cfg)
    transposed = keys.transposed_names(model)
    shapes = {keys.to_checkpoint_name(n): (list(p.shape)[::-1] if n in transposed else list(p.shape))
              for n, p in model.named_parameters()}
    return cfg.to_dict(), shapes | vq_encoder_shapes(cfg.gen_vision)


def _write_configs(out: Path, config: dict) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=2))
    build_tiny_tokenizer(out)
    write_preprocessor_config(out, 384)
    write_processor_config(out, 576)


def build(out: Path, size: str = "1B", torch_python: str | None = None) -> Path:
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config, shapes = published_shapes(size)
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for name, shape in shapes.items():
        values = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02
        tensors[name] = ((values.view(np.uint32) >> 16).astype(np.uint16).reshape(shape), "BF16")
    _write_configs(out, config)
    write_weights(out, tensors)
    del tensors
    if torch_python:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        subprocess.run([torch_python, str(TOOLS / "safetensors_to_torch_bin.py"), str(out)], check=True, env=env)
    done.touch()
    return out


def build_sharded(out: Path, size: str, torch_python: str, shards: int = 2) -> Path:
    """`.bin` shards + index (Janus-Pro-7B's layout), written by torch one shard at a time."""
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config, shapes = published_shapes(size)
    _write_configs(out, config)
    listing = out / "shapes.json"
    listing.write_text(json.dumps(list(shapes.items())))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([torch_python, str(Path(__file__).with_name("torch_shards.py")), str(out), str(listing),
                    str(shards)], check=True, env=env)
    listing.unlink()
    done.touch()
    return out
