"""Steps of many rows on the Janus-Pro-1B shape with bf16 weights against their floor, with the kernels of an
earlier revision and of this checkout taking turns in one process.

    python -m bench.many_rows [--before REV] [--rows 1 2 4 8 16 32] [--positions 2 4 8] [--rounds 5] [--profile]
                              [--own-context]

A step of R rows is one image-token decode step of R rows continuing a one-image prompt at position 300, as the rows
of a generation do (`bench.fullsize`'s workload). "2 rows x k positions" is a step in which each of two rows appends
k positions (a speculative window: k drafted tokens checked in one forward), with image logits at every position.
The floor of a step is the larger of reading its weights once (bytes / copy bandwidth) and its arithmetic (FLOPs of
its products and attention / the rate of a square float32 sgemm through paddle.matmul, i.e. MKL), both measured in
this run.

The rows share the prompt's keys and values, so attention reads them from the caches. A generation's rows are
different: past its short prompt each row's keys and values are its own. `--own-context` gives every row its own
blocks for all CONTEXT positions (a constant: the values do not change the work), so that attention reads them from
memory as a real step of that many rows does; the floor then counts those bytes too.

`--before REV` compiles that revision's kernels and dispatches bf16 products with its row threshold; each round runs
every step with both, the one that goes first alternating, and the first round only warms up. Prints the median
times, the median and quartiles of the rounds' after / before ratios (measured seconds apart: a drift of the
machine's speed cancels out), the floors and after / floor, as JSON. `--profile` adds where one step's time goes
(projections, attention, norms, the generation head, sampling) for each row count, with this checkout's kernels,
through the general layer loop (`Backbone._layers`, whose operations can be timed one by one; timed steps make the
same kernel calls straight from `model.native_layers`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench.big_checkpoint import build
from bench.fullsize import BLOCK, ONE_IMAGE_PROMPT, decode_tables, memory_bandwidth_gbs, one_image_prefill

REPO = Path(__file__).resolve().parents[1]
BEFORE = "fd679d4"  # the last revision whose bf16 products of 9-127 rows widened tiles for MKL's sgemm
CONTEXT = 300


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The rate of a square float32 product through paddle.matmul (MKL), best of a few."""
    import paddle

    a = paddle.randn([size, size], "float32")
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        paddle.matmul(a, a).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def step_shape(janus) -> tuple[int, int]:  # noqa: ANN001
    """(weight bytes, weight elements in products) that one image-token step reads: the backbone layers, the final
    norm, the generation head and the image-token embedding and aligner."""
    nbytes = products = 0
    for name, param in janus.named_parameters():
        if name.startswith(("language_model.llama.layers.", "language_model.llama.norm", "gen_head.", "gen_aligner.",
                            "gen_embed.")):
            nbytes += int(np.prod(param.shape)) * param.element_size()
            if len(param.shape) == 2 and not name.startswith("gen_embed."):
                products += int(np.prod(param.shape))
    return nbytes, products


def kv_bytes(janus, rows: int) -> int:  # noqa: ANN001
    """Bytes of keys and values that `rows` rows of CONTEXT positions each hold (float32, every layer)."""
    cfg = janus.cfg.language
    kv_width = cfg.hidden_size * cfg.num_key_value_heads // cfg.num_attention_heads
    return rows * CONTEXT * cfg.num_hidden_layers * 2 * kv_width * 4


def own_tables(rows: int, positions: int, first_free: int) -> list[list[int]]:
    """Block tables of `rows` rows that share nothing: each its own blocks for `positions` positions."""
    per_row = -(-positions // BLOCK)
    return [list(range(first_free + r * per_row, first_free + (r + 1) * per_row)) for r in range(rows)]


def step_flops(janus, positions: int) -> float:  # noqa: ANN001
    """Multiply-adds x 2 of `positions` row-positions at about CONTEXT cached positions: products and attention."""
    cfg = janus.cfg.language
    attention = 2 * 2 * CONTEXT * cfg.hidden_size * cfg.num_hidden_layers  # scores and weighted sum
    return positions * (2 * step_shape(janus)[1] + attention)


def old_kernels(revision: str, out: Path) -> tuple[ctypes.CDLL, int]:
    """The kernels of `revision` compiled as this checkout compiles its own, and that revision's BF16_ROWS_MAX."""
    from model import cpu_kernels

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout

    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:model/cpu_kernels/"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout.split()
    sources = out / "src"
    sources.mkdir(parents=True, exist_ok=True)
    for name in listing:
        if name.endswith((".c", ".h")):
            (sources / name).write_text(show(f"model/cpu_kernels/{name}"))
    saved = cpu_kernels.SOURCES, cpu_kernels.HEADERS
    cpu_kernels.SOURCES = sorted(sources.glob("*.c"))
    cpu_kernels.HEADERS = sorted(sources.glob("*.h"))
    try:
        path = cpu_kernels.build(out / "build")
    finally:
        cpu_kernels.SOURCES, cpu_kernels.HEADERS = saved
    lib = ctypes.CDLL(str(path))
    for name, argtypes in cpu_kernels._SIGNATURES.items():
        if hasattr(lib, name):
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None
    rows_max = int(re.search(r"^BF16_ROWS_MAX = (\d+)", show("model/layer_ops.py"), re.M).group(1))
    return lib, rows_max


class _Succeeding:
    """An older library whose many-row entry (and, before they could report a failed allocation, few-row kernels)
    returned nothing: it reports success as this checkout's do."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    def __getattr__(self, name: str):  # noqa: ANN204
        function = getattr(self._lib, name)
        if name not in ("janus_linear_bf16", "janus_linear_rows_bf16", "janus_linear_rows"):
            return function
        return lambda *args: function(*args) or 1


@contextmanager
def kernels(lib, rows_max: int):  # noqa: ANN001
    """Run with these kernels and this bf16 row threshold. A library without the in-place window attention (older
    than it) attends windows of several positions as its revision did, through the prompt kernel."""
    from model import attention, cpu_kernels, layer_ops

    window_max = attention.WINDOW_MAX_POSITIONS if hasattr(lib, "janus_paged_window_attention") else 0
    saved = cpu_kernels._loaded.get("lib"), layer_ops.BF16_ROWS_MAX, attention.WINDOW_MAX_POSITIONS
    cpu_kernels._loaded["lib"], layer_ops.BF16_ROWS_MAX, attention.WINDOW_MAX_POSITIONS = lib, rows_max, window_max
    try:
        yield
    finally:
        cpu_kernels._loaded["lib"], layer_ops.BF16_ROWS_MAX, attention.WINDOW_MAX_POSITIONS = saved


def window_step(janus, cache, tables: list[list[int]], positions: int) -> float:  # noqa: ANN001
    """Seconds for a step in which every row appends `positions` image tokens at CONTEXT, with logits for each."""
    import paddle

    from model.kv_cache import RowBatch

    tokens = paddle.zeros([len(tables), positions], "int64")
    started = time.perf_counter()
    embeds = janus.embed_image_tokens(tokens)
    hidden = janus.extend(embeds, cache, RowBatch.of(tables, [CONTEXT] * len(tables)))
    janus.image_logits(hidden.reshape([-1, hidden.shape[-1]])).numpy()
    return time.perf_counter() - started


def sample_rows(logits: np.ndarray, rng: np.random.Generator) -> float:
    """Seconds for what the engine does with a step's image logits on the host: guidance on pairs of rows, then a
    seeded draw (temperature 1) per pair."""
    from model.sampling import choose, guided_logits

    started = time.perf_counter()
    half = len(logits) // 2  # an odd row count: its last row left out (guidance needs pairs)
    choose(guided_logits(logits[:half], logits[half:2 * half], 5.0), 1.0, rng)
    return time.perf_counter() - started


def profile_step(janus, cache, tables: list[list[int]]) -> dict[str, float]:  # noqa: ANN001
    """Seconds of one decode step by part, timed around the backbone's and the heads' calls. The step goes through
    the general layer loop, whose operations are the calls timed here: the same kernels as the plain kernel calls
    of `model.native_layers` (what steps take otherwise) plus each call's Python, which "other" holds with the rest."""
    import paddle

    from model import backbone, native_layers, projector
    from model.kv_cache import RowBatch

    spent: dict[str, float] = defaultdict(float)

    def timed(part: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[part] += time.perf_counter() - started
            return result
        return wrapper

    patches = {(backbone, "linear"): "projections", (backbone, "paged_attention"): "attention",
               (backbone, "add_rms_norm"): "norms", (backbone, "rms_norm"): "norms", (backbone, "swiglu"): "swiglu",
               (projector, "linear"): "generation head", (projector, "gelu"): "generation head"}
    saved = {(module, name): getattr(module, name) for module, name in patches}
    for (module, name), part in patches.items():
        setattr(module, name, timed(part, saved[(module, name)]))
    from model.layer_ops import RotaryPlan
    saved_apply, saved_forward = RotaryPlan.apply, native_layers.forward
    RotaryPlan.apply = timed("rotary", saved_apply)
    native_layers.forward = lambda *_, **__: None  # the general loop, whose parts the wrappers above time
    try:
        token = paddle.zeros([len(tables)], "int64")
        started = time.perf_counter()
        embeds = janus.embed_image_tokens(token).unsqueeze(1)
        spent["generation head"] = 0.0  # the aligner's products above are the input's, not the head's
        hidden = janus.extend(embeds, cache, RowBatch.of(tables, [CONTEXT] * len(tables)))
        logits = janus.image_logits(hidden[:, 0]).numpy()
        spent["step"] = time.perf_counter() - started
        spent["sampling"] = sample_rows(logits, np.random.default_rng(0))
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
        RotaryPlan.apply, native_layers.forward = saved_apply, saved_forward
    spent["other"] = spent["step"] - sum(v for k, v in spent.items() if k not in ("step", "sampling"))
    return dict(spent)


def main() -> None:
    import paddle

    from model.checkpoint.loader import load_janus

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="default: a random 1B checkpoint in the temp folder")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "janus-bench-cache")
    parser.add_argument("--before", default=BEFORE, help="the revision whose kernels to compare with")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--positions", type=int, nargs="*", default=[2, 4, 8],
                        help="window steps of 2 rows x this many positions")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per row count per round (the median counts)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--own-context", action="store_true",
                        help="every row its own keys and values for all CONTEXT positions (as in a generation)")
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    janus, report = load_janus(directory, cache_dir=args.cache, keep_bf16=True)
    if report.weights != "bfloat16":
        raise SystemExit(f"the weights loaded as {report.weights}, not bfloat16")
    from model import cpu_kernels, layer_ops

    with tempfile.TemporaryDirectory(prefix="janus-kernels-before-") as built:  # the loaded library outlives it
        before_lib, before_rows_max = old_kernels(args.before, Path(built))
    variants = {"before": (_Succeeding(before_lib), before_rows_max),
                "after": (cpu_kernels.library(), layer_ops.BF16_ROWS_MAX)}
    longest = max(args.positions + [1]) + args.steps
    prompt_blocks = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    own = -(-(CONTEXT + longest + 1) // BLOCK) - (0 if args.own_context else CONTEXT // BLOCK)
    cache = janus.new_cache(prompt_blocks + max(args.rows + [2]) * own, BLOCK)
    if args.own_context:  # written, as a real row's blocks are: pages never written all read the one zero page
        from model.host_memory import host_view

        for pool in cache.keys + cache.values:
            host_view(pool)[...] = 0.01
    prompt_table = list(range(prompt_blocks))
    one_image_prefill(janus, cache, prompt_table)

    def tables_of(rows: int) -> list[list[int]]:
        if args.own_context:
            return own_tables(rows, CONTEXT + longest + 1, prompt_blocks)
        return decode_tables(prompt_table, rows, CONTEXT, longest, prompt_blocks)

    workloads: dict[str, tuple[int, Callable[[], float]]] = {}
    for rows in args.rows:
        tables = tables_of(rows)
        workloads[f"{rows} rows"] = (rows, lambda tables=tables: window_step(janus, cache, tables, 1))
    for positions in args.positions:
        tables = tables_of(2)
        workloads[f"2 rows x {positions} positions"] = (
            2 * positions, lambda tables=tables, positions=positions: window_step(janus, cache, tables, positions))

    bandwidth, gflops = memory_bandwidth_gbs(), sgemm_gflops()
    times: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in variants}
    for round_ in range(args.rounds + 1):
        for name in (("before", "after") if round_ % 2 else ("after", "before")):
            lib, rows_max = variants[name]
            with kernels(lib, rows_max):
                for label, (_, run) in workloads.items():
                    taken = float(np.median([run() for _ in range(args.steps)]))
                    if round_:
                        times[name][label].append(taken)
    bandwidth, gflops = max(bandwidth, memory_bandwidth_gbs()), max(gflops, sgemm_gflops())
    weight_bytes, _ = step_shape(janus)
    result = {}
    for label, (positions, _) in workloads.items():
        rows = int(label.split()[0])
        read = weight_bytes + (kv_bytes(janus, rows) if args.own_context else 0)
        floor = max(read / (bandwidth * 1e9), step_flops(janus, positions) / (gflops * 1e9))
        ratios = [a / b for a, b in zip(times["after"][label], times["before"][label], strict=True)]
        after = float(np.median(times["after"][label]))
        result[label] = {"before_ms": 1e3 * float(np.median(times["before"][label])), "after_ms": 1e3 * after,
                         "after_over_before": float(np.median(ratios)),
                         "after_over_before_quartiles": np.percentile(ratios, [25, 75]).round(3).tolist(),
                         "floor_ms": 1e3 * floor, "after_over_floor": after / floor}
    output = {"own_context": args.own_context, "before": args.before, "before_bf16_rows_max": variants["before"][1],
              "after_bf16_rows_max": variants["after"][1], "rounds": args.rounds,
              "memory_bandwidth_gbs": bandwidth, "sgemm_gflops": gflops, "step_weight_gib": weight_bytes / 2**30,
              "steps": result}
    if args.profile:
        output["profile_ms"] = {}
        for rows in args.rows:
            tables = tables_of(rows)
            profile_step(janus, cache, tables)  # warm
            parts = [profile_step(janus, cache, tables) for _ in range(3)]
            output["profile_ms"][f"{rows} rows"] = {k: round(1e3 * float(np.median([p[k] for p in parts])), 2)
                                                    for k in parts[0]}
    print(json.dumps(output))


if __name__ == "__main__":
    main()
