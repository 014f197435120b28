"""Rewrite a checkpoint's safetensors weights as torch pickles, the way Janus-Pro is published.

Runs in an interpreter that has torch (the oracle's venv): writing `.bin` files needs torch, reading them must not.
Usage: python safetensors_to_torch_bin.py DIR [--shards N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    source = args.directory / "model.safetensors"
    state = load_file(str(source))
    source.unlink()
    if args.shards <= 1:
        torch.save(state, args.directory / "pytorch_model.bin")
        return
    names = sorted(state)
    weight_map = {}
    for i in range(args.shards):
        file_name = f"pytorch_model-{i + 1:05d}-of-{args.shards:05d}.bin"
        part = names[i::args.shards]
        torch.save({n: state[n] for n in part}, args.directory / file_name)
        weight_map.update(dict.fromkeys(part, file_name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (args.directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


if __name__ == "__main__":
    main()
