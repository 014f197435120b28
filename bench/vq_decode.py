"""The Janus-Pro-1B VQ image decoder (384 px, float32, CPU, random weights) three ways, side by side in one run:
ours through the CPU kernels (channels-last), ours on Paddle's own ops (`JANUS_CPU_KERNELS=off`: the path before
the kernels), and transformers' Janus (torch) on the same weights and tokens, from the oracle's environment.

    python -m bench.vq_decode [--batches 1 4] [--rounds 2]

Every round runs all three (the peer in a subprocess) one after the other; each figure is the best round, in
seconds per image. The peer's one-image pixels are compared with ours as a check that both decode the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import model  # noqa: F401  (runtime environment before paddle)
from tests.oracle.client import oracle_python

PEER_SCRIPT = Path(__file__).resolve().with_name("vq_peer.py")


def build_decoder(seed: int = 0):  # noqa: ANN201
    import paddle

    from model.config import published_config
    from model.vq_decoder import VQDecoder

    paddle.seed(seed)
    decoder = VQDecoder(published_config("1B").gen_vision)
    decoder.eval()
    return decoder


def save_weights(decoder, path: Path) -> None:  # noqa: ANN001
    """DeepSeek's key names (what the peer's loader maps) and the config."""
    arrays = {f"gen_vision_model.{name}": value.numpy() for name, value in decoder.state_dict().items()}
    np.savez(path, config=np.array(json.dumps(asdict(decoder.cfg))), **arrays)


def time_ours(decoder, tokens: np.ndarray, batch: int, kernels: bool) -> float:  # noqa: ANN001
    import paddle

    previous = os.environ.get("JANUS_CPU_KERNELS")
    os.environ["JANUS_CPU_KERNELS"] = "require" if kernels else "off"
    try:
        with paddle.no_grad():
            start = time.perf_counter()
            decoder(paddle.to_tensor(tokens[:batch])).numpy()
            return time.perf_counter() - start
    finally:
        if previous is None:
            del os.environ["JANUS_CPU_KERNELS"]
        else:
            os.environ["JANUS_CPU_KERNELS"] = previous


def run_peer(weights: Path, tokens_path: Path, batches: list[int], out: Path) -> dict[str, np.ndarray]:
    python = oracle_python()
    if python is None:
        raise SystemExit("no oracle environment: run tests/oracle/setup_venv.sh or set JANUS_ORACLE_PYTHON")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([str(python), str(PEER_SCRIPT), "--weights", str(weights), "--tokens", str(tokens_path),
                    "--batches", *map(str, batches), "--out", str(out)], check=True, env=env,
                   stdin=subprocess.DEVNULL)
    with np.load(out) as npz:
        return {key: npz[key] for key in npz.files}


def main() -> None:
    import paddle

    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    decoder = build_decoder()
    cfg = decoder.cfg
    tokens = np.random.default_rng(1).integers(0, cfg.image_token_size, (max(args.batches), cfg.grid ** 2))
    best: dict[tuple[str, int], float] = {}

    def record(name: str, batch: int, seconds: float) -> None:
        best[name, batch] = min(best.get((name, batch), float("inf")), seconds / batch)
        print(f"  {name:<28} batch {batch}: {seconds / batch:6.2f} s/image", flush=True)

    with tempfile.TemporaryDirectory(prefix="janus-vq-bench-") as tmp:
        weights, tokens_path = Path(tmp) / "weights.npz", Path(tmp) / "tokens.npy"
        save_weights(decoder, weights)
        np.save(tokens_path, tokens)
        with paddle.no_grad():  # warm-up, and the one-image pixels the peer's are checked against
            ours_pixels = decoder(paddle.to_tensor(tokens[:1])).numpy()
        peer_pixels = None
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for batch in args.batches:
                record("janus-serve, CPU kernels", batch, time_ours(decoder, tokens, batch, kernels=True))
                record("janus-serve, Paddle ops (before)", batch, time_ours(decoder, tokens, batch, kernels=False))
            peer = run_peer(weights, tokens_path, args.batches, Path(tmp) / "peer.npz")
            peer_pixels = peer["pixels_1"]
            for batch in args.batches:
                record("transformers Janus (torch)", batch, float(peer[f"seconds_{batch}"].min()))
    difference = float(np.abs(ours_pixels - peer_pixels).max())
    rows = ["janus-serve, Paddle ops (before)", "janus-serve, CPU kernels", "transformers Janus (torch)"]
    header = "| decoder | " + " | ".join(f"batch {b}, s/image" for b in args.batches) + \
             " | " + " | ".join(f"vs torch, batch {b}" for b in args.batches) + " |"
    print("\n" + header)
    print("|" + "---|" * (1 + 2 * len(args.batches)))
    for name in rows:
        times = " | ".join(f"{best[name, b]:.2f}" for b in args.batches)
        ratios = " | ".join(f"{best['transformers Janus (torch)', b] / best[name, b]:.2f}x" for b in args.batches)
        print(f"| {name} | {times} | {ratios} |")
    print(f"\nmax |janus-serve - torch| over the one-image pixels: {difference:.2e} "
          f"(pixel range {float(peer_pixels.min()):.2f} .. {float(peer_pixels.max()):.2f})")
    print(json.dumps({f"{name} / batch {b}": round(best[name, b], 3) for name in rows for b in args.batches}
                     | {"max_abs_pixel_difference": difference}))


if __name__ == "__main__":
    main()
