"""bf16-stored and float32 weights of one checkpoint in one process, their one-image prefills and decode steps
taking turns: ratios of measurements taken side by side, not minutes apart in two processes on a machine
whose speed drifts.

    python -m bench.bf16_alternating [--dir DIR] [--rounds 8] [--rows 1 2 32]

Both networks are in memory at once (Janus-Pro-1B shape: 4.8 + 8.6 GiB). Each round runs one prefill and
`--steps` decode steps per row count with each storage, the storage that goes first alternating; the first round
only warms up. Prints median times, and the median and quartiles of the rounds' bf16 / float32 ratios, as JSON.
`bench.bf16_weights` runs it for the 1B shape.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench.big_checkpoint import build
from bench.fullsize import BLOCK, ONE_IMAGE_PROMPT, blocks_needed, decode_step, decode_tables, one_image_prefill

STORAGES = ("bfloat16", "float32")


def main() -> None:
    import paddle

    from model.checkpoint.loader import load_janus

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="default: a random 1B checkpoint in the temp folder")
    for weights in STORAGES:
        parser.add_argument(f"--{weights}-cache", type=Path,
                            default=Path(tempfile.gettempdir()) / f"janus-bench-cache-{weights}",
                            help=f"where the {weights} weights are converted (reused when already there)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 32])
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    networks = {w: load_janus(directory, cache_dir=getattr(args, f"{w}_cache"), keep_bf16=w == "bfloat16")[0]
                for w in STORAGES}
    prompt_blocks, pool_blocks = blocks_needed(max(args.rows), args.context, args.steps)
    caches = {w: janus.new_cache(pool_blocks, BLOCK) for w, janus in networks.items()}
    prompt_table = list(range(prompt_blocks))
    times: dict[str, dict[str, list[float]]] = {w: {} for w in STORAGES}
    for round_ in range(args.rounds + 1):
        for weights in STORAGES if round_ % 2 else STORAGES[::-1]:
            janus, cache, kept = networks[weights], caches[weights], times[weights]
            vision_s, language_s = one_image_prefill(janus, cache, prompt_table)
            taken = {"prefill_vision": vision_s, "prefill_language": language_s, "prefill": vision_s + language_s}
            for rows in args.rows:
                tables = decode_tables(prompt_table, rows, args.context, args.steps, prompt_blocks)
                steps = [decode_step(janus, cache, tables, args.context + step) for step in range(args.steps)]
                taken[f"decode_{rows}_rows"] = float(np.median(steps))
            if round_:  # the first round pays for first touches and lazy set-up
                for name, seconds in taken.items():
                    kept.setdefault(name, []).append(seconds)
    medians = {w: {name: float(np.median(values)) for name, values in times[w].items()} for w in STORAGES}
    # each round's bf16 / float32 ratio: the two were measured a few seconds apart, so a drift of the machine's speed
    # over the run cancels out of it (the ratio of the medians keeps it)
    paired = {name: [b / f for b, f in zip(times["bfloat16"][name], times["float32"][name], strict=True)]
              for name in times["float32"]}
    print(json.dumps({
        "rounds": args.rounds, "prompt_tokens": len(ONE_IMAGE_PROMPT), "context_tokens": args.context,
        "seconds": medians, "bf16_over_float32": {name: float(np.median(r)) for name, r in paired.items()},
        "bf16_over_float32_quartiles": {name: np.percentile(r, [25, 75]).tolist() for name, r in paired.items()},
        "per_round_prefill_ratio": paired["prefill"],
    }))

if __name__ == "__main__":
    main()
