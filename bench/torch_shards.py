"""Random bf16 weights written as torch `.bin` shards plus `pytorch_model.bin.index.json`, the way Janus-Pro-7B is
published. Runs in an interpreter that has torch (the oracle's venv); one shard's tensors are in memory at a time.

    python bench/torch_shards.py DIR SHAPES.json SHARDS
SHAPES.json: [[key, shape], ...] in the order to write; the first shards are filled to an equal share of the bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    out, shapes_path, shards = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    shapes = json.loads(shapes_path.read_text())
    sizes = [2 * int(torch.tensor(shape).prod()) if shape else 2 for _, shape in shapes]
    share = sum(sizes) / shards
    groups: list[list[int]] = [[]]
    filled = 0
    for i, size in enumerate(sizes):
        if filled >= share * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        filled += size
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        name = f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin"
        state = {}
        for i in group:
            key, shape = shapes[i]
            state[key] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        torch.save(state, out / name)
        weight_map.update(dict.fromkeys(state, name))
        del state
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


if __name__ == "__main__":
    main()
