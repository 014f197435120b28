"""The published Janus-Pro-1B (or 7B) architecture (random weights) on this machine: load, prefill, decode steps,
VQ decoding, memory, and the decode step against the memory-bandwidth floor measured in the same run.

    python -m bench.fullsize [--size 1B] [--weights bfloat16|float32] [--quantization none|int8] [--dir DIR]
                             [--rows 1 8 32] [--context 300]

`--weights bfloat16` keeps the checkpoint's bf16 weights (what JANUS_DTYPE=auto does on the CPU), float32 widens
them; `--quantization int8` holds the projections as int8 (JANUS_QUANTIZATION=int8; use it with bfloat16). A
decode step reads every backbone weight once, so it cannot beat (weight bytes / memory bandwidth). The report gives
step time / that floor: 1.0 would be perfect; large values mean per-op overhead or extra copies.
`python -m bench.bf16_weights` runs this for both storages side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench.big_checkpoint import build


def memory_bandwidth_gbs(size_gib: float = 1.0, repeats: int = 3) -> float:
    """Sustained copy bandwidth in GB/s (bytes read + bytes written, per second), best of a few runs."""
    n = int(size_gib * 2**30 / 4)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / 1e9


def resident_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def held_bytes(layers) -> int:  # noqa: ANN001
    """Bytes of the layers' own weights (not their sublayers'), with the scales of int8 ones: a float32 per column
    and group of rows, 1/16 of the int8 bytes at groups of 64."""
    total = 0
    for layer in layers:
        for tensor in [*layer.parameters(include_sublayers=False), getattr(layer, "weight_scale", None)]:
            if tensor is not None:
                total += int(np.prod(tensor.shape)) * tensor.element_size()
    return total


def step_weight_bytes(janus) -> int:  # noqa: ANN001
    """Weights one image-token decode step reads: the backbone layers, final norm, gen head, gen embed/aligner."""
    return held_bytes(layer for name, layer in janus.named_sublayers() if name.startswith((
        "language_model.llama.layers.", "language_model.llama.norm", "gen_head.", "gen_aligner.", "gen_embed.")))


ONE_IMAGE_PROMPT = np.concatenate([[100000], np.arange(1000, 1020), [100016], np.full(576, 100581), [100017],
                                   np.arange(2000, 2020)]).astype(np.int64)  # 576 image positions + ~40 text tokens
IMAGE_TOKEN = 100581
BLOCK = 16


def one_image_prefill(janus, cache, table: list[int]) -> tuple[float, float]:  # noqa: ANN001
    """(vision encoder s, language model s) for one one-image understanding prompt written into `table`'s blocks."""
    import paddle

    from model.kv_cache import RowBatch

    pixels = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (1, 3, 384, 384)).astype(np.float32))
    started = time.perf_counter()
    features = janus.encode_images(pixels)
    vision_done = time.perf_counter()
    embeds = janus.embed_prompt(paddle.to_tensor(ONE_IMAGE_PROMPT[None]), features, IMAGE_TOKEN)
    hidden = janus.extend(embeds, cache, RowBatch.of([table], [0]), last_only=True)
    janus.text_logits(hidden[:, -1]).numpy()
    return vision_done - started, time.perf_counter() - vision_done


def decode_tables(prompt_table: list[int], rows: int, context: int, steps: int, first_free: int) -> list[list[int]]:
    """Block tables of `rows` rows continuing one prompt, as the rows of a generation do: the prompt's whole blocks
    up to `context` shared, the rest each row's own (blocks from `first_free` on)."""
    shared = prompt_table[:context // BLOCK]
    own = -(-(context + steps + 1) // BLOCK) - len(shared)
    return [shared + list(range(first_free + r * own, first_free + (r + 1) * own)) for r in range(rows)]


def decode_step(janus, cache, tables: list[list[int]], position: int, text: bool = False) -> float:  # noqa: ANN001
    """Seconds for one image-token decode step of len(tables) rows, each writing `position` (text: a text-token step,
    the token embedding and the language model's head instead of the generation path's)."""
    import paddle

    from model.kv_cache import RowBatch

    token = paddle.zeros([len(tables)], "int64")
    started = time.perf_counter()
    embeds = janus.embed_text(token.unsqueeze(1)) if text else janus.embed_image_tokens(token).unsqueeze(1)
    hidden = janus.extend(embeds, cache, RowBatch.of(tables, [position] * len(tables)))
    (janus.text_logits if text else janus.image_logits)(hidden[:, 0]).numpy()
    return time.perf_counter() - started


def blocks_needed(rows: int, context: int, steps: int) -> tuple[int, int]:
    """(blocks of the one-image prompt, blocks of the whole pool) for `rows` decode rows after it."""
    prompt = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    own = -(-(context + steps + 1) // BLOCK) - context // BLOCK
    return prompt, prompt + rows * own


def main() -> None:
    import paddle

    from model.checkpoint.loader import load_janus

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["1B", "7B"], default="1B")
    parser.add_argument("--weights", choices=["bfloat16", "float32"], default="float32")
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--dir", type=Path, default=None, help="default: a random checkpoint under the temp folder")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "janus-bench-cache")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context", type=int, default=300,
                        help="positions of the prefilled prompt each decode row continues from")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prefills", type=int, default=2, help="one-image prefills to time (the best counts)")
    parser.add_argument("--vq", action="store_true", help="also time the VQ decoding of one image")
    args = parser.parse_args()
    if args.context > len(ONE_IMAGE_PROMPT):
        parser.error(f"--context must be at most the prompt's {len(ONE_IMAGE_PROMPT)} positions")
    paddle.set_grad_enabled(False)
    bandwidth = memory_bandwidth_gbs()
    directory = args.dir or build(Path(tempfile.gettempdir()) / f"janus-{args.size.lower()}-random", args.size)
    keep_bf16 = args.weights == "bfloat16"
    held = {"keep_bf16": keep_bf16, "quantization": args.quantization}
    load_janus(directory, cache_dir=args.cache, **held)  # the converted cache: we time a later start
    started = time.perf_counter()
    janus, report = load_janus(directory, cache_dir=args.cache, **held)
    load_s = time.perf_counter() - started
    rss_after_load = resident_gib()
    weights_gib = held_bytes(janus.sublayers(include_self=True)) / 2**30
    prompt_blocks, pool_blocks = blocks_needed(max(args.rows), args.context, args.steps)
    cache = janus.new_cache(pool_blocks, BLOCK)
    prompt_table = list(range(prompt_blocks))
    T = len(ONE_IMAGE_PROMPT)
    prefill_s = float("inf")
    for _ in range(args.prefills):  # the best of a few: the first also pays for first-touch allocations
        prefill_s = min(prefill_s, sum(one_image_prefill(janus, cache, prompt_table)))

    floor_s = step_weight_bytes(janus) / (bandwidth * 1e9)
    steps = {}
    for rows in args.rows:
        tables = decode_tables(prompt_table, rows, args.context, args.steps, prompt_blocks)
        timings = [decode_step(janus, cache, tables, args.context + step) for step in range(args.steps + 1)]
        step_s = float(np.median(timings[1:]))
        steps[str(rows)] = {"step_s": step_s, "vs_floor": step_s / floor_s}
    vq_s = None
    if args.vq:
        tokens = paddle.to_tensor(np.random.default_rng(1).integers(0, 16384, (1, 576)))
        started = time.perf_counter()
        janus.decode_images(tokens)
        vq_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({
        "model": f"Janus-Pro-{args.size} shape, random weights", "weights": report.weights,
        "quantization": args.quantization, "parameters": report.parameters, "weights_gib": weights_gib,
        "rss_after_load_gib": rss_after_load,
        "load_s": load_s, "load_source": report.source,
        "prefill_one_image_s": prefill_s, "vq_decode_one_image_s": vq_s, "prompt_tokens": T,
        "context_tokens": args.context,
        "memory_bandwidth_gbs": bandwidth, "step_weight_gib": step_weight_bytes(janus) / 2**30,
        "floor_step_s": floor_s, "decode": steps, "peak_rss_gib": peak}))


if __name__ == "__main__":
    main()
