"""The bf16 projection kernels alone on Janus-Pro-1B's product shapes, taking turns in one process: the few-row
kernel (`janus_linear_rows_bf16`), the register-blocked kernel as an earlier revision built it, and this checkout's.

    python -m bench.bf16_products [--base REV] [--rows 1 2 3 4 6 8 12 16 32] [--rounds 7]

Prints one line per shape and row count: the median milliseconds of each kernel and the rate that makes
(2 * rows * K * N / time). The same weight is used call after call, so the smaller ones (8 MiB for 2048 x 2048)
stay in the 32 MiB L3 cache: these are the kernels' arithmetic rates, not a decode step's (see `bench.many_rows`),
and the few-row kernel's 1-2 row figures are flattered most.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import model  # noqa: F401  (sets the thread count before paddle loads)
from bench.many_rows import old_kernels

SHAPES = {"q/k/v/o 2048x2048": (2048, 2048), "gate/up 2048x5632": (2048, 5632), "down 5632x2048": (5632, 2048),
          "generation head 2048x16384": (2048, 16384)}


def main() -> None:
    import paddle

    from model import cpu_kernels

    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="HEAD", help="the revision whose blocked kernel to compare with")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16, 32])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    lib = cpu_kernels.library()
    with tempfile.TemporaryDirectory(prefix="janus-kernels-base-") as built:  # the loaded library outlives it
        base, _ = old_kernels(args.base, Path(built))
    kernels = {"few-row": lib.janus_linear_rows_bf16, f"blocked {args.base}": base.janus_linear_blocked_bf16,
               "blocked": lib.janus_linear_blocked_bf16}
    rng = np.random.default_rng(0)
    for name, (K, N) in SHAPES.items():
        weight = paddle.to_tensor((rng.standard_normal((K, N)) * K**-0.5).astype(np.float32)).astype("bfloat16")
        for rows in args.rows:
            x = paddle.randn([rows, K], "float32")
            y = paddle.empty([rows, N], "float32")
            call = (x.data_ptr(), weight.data_ptr(), None, y.data_ptr(), rows, K, N)
            times: dict[str, list[float]] = {kernel: [] for kernel in kernels}
            for round_ in range(args.rounds + 2):  # two rounds of warm-up
                for kernel, function in kernels.items():
                    started = time.perf_counter()
                    function(*call)
                    if round_ >= 2:
                        times[kernel].append(time.perf_counter() - started)
            parts = []
            for kernel, taken in times.items():
                seconds = float(np.median(taken))
                parts.append(f"{kernel} {1e3 * seconds:.2f} ms ({2 * rows * K * N / seconds / 1e9:.0f} GFLOP/s)")
            print(f"{name}, {rows} rows: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()
