"""Finding and reading the weight files of a checkpoint directory, in any of the published layouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model.checkpoint import safetensors_io, torch_pickle
from model.checkpoint.errors import CheckpointError

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files to read, in a stable order; an index names its shards."""
    for index_name in INDEX_FILES:
        index_path = directory / index_name
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index_path}: corrupt index ({err})") from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).exists()]
            if missing:
                raise CheckpointError(f"{index_path} names shard files that do not exist: {', '.join(missing)}")
            return [directory / s for s in shards]
    for name in SINGLE_FILES:
        if (directory / name).exists():
            return [directory / name]
    raise CheckpointError(
        f"no weights in {directory}: expected one of {', '.join(SINGLE_FILES + INDEX_FILES)}")


def iter_tensors(path: Path) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(key, array, is_bf16) for every tensor in one weight file. bf16 arrives as uint16 bits."""
    if path.suffix == ".safetensors":
        # one tensor read at a time (no memory map: touched pages of a mapping count as resident memory)
        weights = safetensors_io.SafetensorsFile(path)
        for key in weights.shapes():
            arr, code = weights.read(key)
            yield key, arr, code == "BF16"
        return
    yield from torch_pickle.iter_tensors(path)

