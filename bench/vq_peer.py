"""The peer's side of `bench.vq_decode`: transformers' Janus VQ decoder (torch, float32, CPU) on given weights.

Runs in the oracle's virtual environment (torch + transformers), never beside Paddle:

    python bench/vq_peer.py --weights W.npz --tokens T.npy --batches 1 4 --repeats 2 --out OUT.npz

W.npz holds the decoder's weights under DeepSeek's key names (`gen_vision_model.…`) and a `config` entry (the VQ
config as JSON); the names are mapped to transformers' as the test oracle maps them. OUT.npz gets, per batch size
b, `seconds_b` (each timed decode of the first b token rows) and `pixels_1` (the one-image decode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "oracle"))
import hf_janus_oracle as oracle  # noqa: E402

PREFIX = "model.vqmodel."


def load(weights_path: Path) -> JanusVQVAE:
    with np.load(weights_path, allow_pickle=False) as npz:
        cfg = json.loads(str(npz["config"]))
        weights = {key: torch.from_numpy(npz[key]) for key in npz.files if key != "config"}
    config = JanusVQVAEConfig(embed_dim=cfg["n_embed"], num_embeddings=cfg["image_token_size"], double_latent=False,
                              latent_channels=cfg["z_channels"], in_channels=3, out_channels=3,
                              base_channels=cfg["ch"], channel_multiplier=cfg["ch_mult"],
                              num_res_blocks=cfg["num_res_blocks"])
    grid = cfg["image_size"] // 2 ** (len(cfg["ch_mult"]) - 1)
    config.num_patches = grid
    model = JanusVQVAE(config).eval()
    arch = oracle.Architecture(vision_layers_used=0, aligner_depth=0, gen_aligner_depth=0, vq_tokens=grid * grid,
                               image_token_size=cfg["image_token_size"])
    mapped, unknown = oracle.map_state_dict(weights, arch)
    state = {key.removeprefix(PREFIX): value for key, value in mapped.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unfilled = [key for key in missing if not key.startswith(("encoder.", "quant_conv."))]  # encoding is not run
    if unknown or unexpected or unfilled:
        raise SystemExit(f"weights do not fit: unknown {unknown[:5]}, unexpected {unexpected[:5]}, "
                         f"unfilled {unfilled[:5]}")
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model = load(args.weights)
    tokens = torch.from_numpy(np.load(args.tokens)).long()
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        out["pixels_1"] = model.decode(tokens[:1]).numpy()  # also the warm-up
        for batch in args.batches:
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model.decode(tokens[:batch])
                seconds.append(time.perf_counter() - start)
            out[f"seconds_{batch}"] = np.array(seconds)
    np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
