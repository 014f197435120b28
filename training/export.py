"""Writes a trained network as a checkpoint folder in the published layout (what `model.checkpoint` loads and
`model.tiny_checkpoint` writes for random weights): config.json, model.safetensors with the published key names and
torch's [out, in] Linear layout, the tokenizer files and the processor configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from model.checkpoint import keys
from model.janus import JanusModel
from model.tiny_checkpoint import write_weights
from model.tokenizer_builder import write_preprocessor_config, write_processor_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_checkpoint(model: JanusModel, tokenizer_dir: Path, out: Path,
                     examples: dict[str, list[str]] | None = None) -> Path:
    """`examples`: prompts and questions for the playground to suggest (playground.json)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if tokenizer_dir.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, out / name)
    write_preprocessor_config(out, cfg.vision.image_size)
    write_processor_config(out, cfg.vision.num_tokens)
    transposed = keys.transposed_names(model)
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for name, param in model.named_parameters():
        array = np.asarray(param.numpy(), np.float32)
        if name in transposed:
            array = np.ascontiguousarray(array.T)
        tensors[keys.to_checkpoint_name(name)] = (array, "F32")
    write_weights(out, tensors)
    if examples:
        (out / "playground.json").write_text(json.dumps(examples, indent=2) + "\n")
    return out
