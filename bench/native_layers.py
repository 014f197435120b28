"""Decode steps with the decoder layers as plain kernel calls (`model.native_layers`) against the general layer loop
(`Backbone._layers`, each operation through `layer_ops` with its checks and a Paddle tensor per output), taking turns
in one process, on the Janus-Pro-1B shape with bf16 and int8 weights.

    python -m bench.native_layers [--rows 1 2 8 32] [--rounds 5] [--storages bf16 int8] [--overhead] [--text]

A step of R rows is one image-token decode step continuing a one-image prompt at position 300 (`bench.int8`'s
workload); with `--text`, a text-token step (an answer's: the language model's head over the 102,400-token
vocabulary instead of the generation head's 16,384). Each round times every (storage, loop) pair at each row
count, the one that goes first rotating; the first round only warms up. Prints the median times, the median and
quartiles of the rounds' native / general ratios and, with both storages, int8 / bf16 for each loop, as JSON.
`--overhead` runs the same on a model of the 1B's 24 layers and 16 heads but 128 wide, whose kernels take almost
nothing: what is left is each loop's fixed cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench.big_checkpoint import build
from bench.fullsize import BLOCK, ONE_IMAGE_PROMPT, decode_step, decode_tables, one_image_prefill
from bench.int8 import CONTEXT, _load
from model import native_layers

LOOPS = ("native", "general")


def overhead_checkpoint(out: Path) -> Path:
    """Janus-Pro-1B's 24 layers, 16 heads and vocabulary around a 128-wide backbone, bf16 like the published files."""
    from model.tiny_checkpoint import build_tiny_checkpoint, preset_config

    if (out / "config.json").exists():
        return out
    cfg = preset_config("demo")
    language = cfg.language
    language.num_hidden_layers, language.num_attention_heads, language.num_key_value_heads = 24, 16, 16
    language.vocab_size = 102400  # the one-image prompt's ids
    return build_tiny_checkpoint(out, dtype="bfloat16", cfg=cfg)


def main() -> None:
    import paddle

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="default: a random 1B checkpoint in the temp folder")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "janus-bench-cache")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storages", nargs="+", choices=["bf16", "int8"], default=["bf16", "int8"])
    parser.add_argument("--overhead", action="store_true", help="a 128-wide model of the 1B's layers and heads")
    parser.add_argument("--text", action="store_true", help="text-token steps instead of image-token ones")
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    temp = Path(tempfile.gettempdir())
    if args.overhead:
        directory = overhead_checkpoint(temp / "janus-1b-layers-128-wide")
    else:
        directory = args.dir or build(temp / "janus-1b-random", "1B")
    real_forward = native_layers.forward
    prompt_blocks = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    longest = 64
    own = -(-(CONTEXT + longest + 1) // BLOCK) - CONTEXT // BLOCK
    work = {}
    for storage in args.storages:
        janus, _ = _load(directory, args.cache / "int8" if storage == "int8" else args.cache, storage)
        cache = janus.new_cache(prompt_blocks + max(args.rows) * own, BLOCK)
        table = list(range(prompt_blocks))
        one_image_prefill(janus, cache, table)
        work[storage] = (janus, cache, table)
    pairs = [(storage, loop) for storage in args.storages for loop in LOOPS]
    times: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        for round_ in range(args.rounds + 1):
            order = pairs[round_ % len(pairs):] + pairs[:round_ % len(pairs)]
            for rows in args.rows:
                for storage, loop in order:
                    native_layers.forward = real_forward if loop == "native" else (lambda *_, **__: None)
                    janus, cache, table = work[storage]
                    tables = decode_tables(table, rows, CONTEXT, longest, prompt_blocks)
                    steps = [decode_step(janus, cache, tables, CONTEXT + i, args.text) for i in range(3)]
                    taken = float(np.median(steps))
                    if round_:
                        times[storage, loop][rows].append(taken)
    finally:
        native_layers.forward = real_forward

    def ratios(top: tuple[str, str], bottom: tuple[str, str]) -> dict:
        out = {}
        for rows in args.rows:
            r = np.array(times[top][rows]) / np.array(times[bottom][rows])
            out[f"{rows} rows"] = {"median": round(float(np.median(r)), 3),
                                   "quartiles": [round(float(q), 3) for q in np.quantile(r, [0.25, 0.75])]}
        return out

    output = {"model": "128-wide, 1B's layers and heads" if args.overhead else "Janus-Pro-1B shape, random weights",
              "step": "text token" if args.text else "image token", "rounds": args.rounds,
              "ms": {f"{s} {loop}": {f"{rows} rows": round(1e3 * float(np.median(t)), 2) for rows, t in v.items()}
                     for (s, loop), v in times.items()},
              "native_over_general": {s: ratios((s, "native"), (s, "general")) for s in args.storages}}
    if len(args.storages) == 2:
        output["int8_over_bf16"] = {loop: ratios(("int8", loop), ("bf16", loop)) for loop in LOOPS}
    print(json.dumps(output))


if __name__ == "__main__":
    main()
