"""int8 weights (JANUS_QUANTIZATION=int8) against bf16 and float32 on one checkpoint, in one process.

    python -m bench.int8 [--dir DIR] [--rows 1 2 8 32] [--rounds 5] [--no-float32] [--profile]  # speed, memory
    python -m bench.int8 --quality [--dir DIR] [--steps 256]                         # int8 against bf16 logits
    python -m bench.int8 --groups                                                    # error and speed per group
    python -m bench.int8 --crossover [--rounds 5] [--rows ...]     # int8 steps of 1-8 rows: streaming or blocked

Default checkpoint: a random one with the Janus-Pro-1B shape (`bench.big_checkpoint`).

Speed and memory: the first start with int8 (conversion and quantization into a fresh cache) runs in a child
process, which reports its time and peak resident memory against the checkpoint's size. Then this process loads
the checkpoint three ways (int8, bf16 weights computed in float32, and everything float32), noting the resident
memory each adds, and times in rounds, the storages taking turns (the one going first rotating, the first round
only warming up): one image-token decode step at each row count (rows continuing a one-image prompt at position
300, as a generation's rows do; the storages' steps of a row count back to back) and one one-image understanding
prefill (vision encoder and language model). `int8_over_bf16` is the median of the rounds' ratios, with their
quartiles: the machine's memory bandwidth moves from minute to minute and moves bf16's steps (twice the bytes) more
than int8's, so a ratio of two storages' medians taken minutes apart says less.

Quality: the same checkpoint as int8 and as bf16 (the reference). Greedy decoding with the reference for `--steps`
tokens, understanding (one image, a question) and image tokens (a guided pair of rows); then both networks are run
over the reference's tokens (teacher-forced, so every step sees the same input) and compared step by step: the
largest logit difference relative to the reference's largest logit, and the share of steps whose greedy choice
agrees; and int8 decoding on its own, how many steps it agrees with the reference before it first parts.

Crossover: int8 decode steps of 1 to 8 rows (or `--rows`) with every product on the streaming kernel (more than 8
rows in passes of 8, each reading the weights again) and with every product on the blocked one (alternating per
round), to place `model.cpu_kernels.int8.ROWS_MAX`.

Groups: for groups of 32, 64, 128 weight rows and one scale per column, the products' relative RMS error on the
demo model's trained weights and on the random 1B weights, and the time of 1- and 2-row products through four of
the 1B's layers (their q, up and down projections: more than the L3 cache holds), median of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import model  # noqa: F401  (the runtime environment before paddle)
from bench.big_checkpoint import build
from bench.fullsize import BLOCK, ONE_IMAGE_PROMPT, decode_step, decode_tables, one_image_prefill, resident_gib

CONTEXT = 300
STORAGES = ("int8", "bf16", "float32")


def _load(directory: Path, cache: Path, storage: str):  # noqa: ANN202
    from model.checkpoint.loader import load_janus

    return load_janus(directory, cache_dir=cache, keep_bf16=storage != "float32",
                      quantization="int8" if storage == "int8" else "none")


def first_start(directory: Path, cache: Path) -> dict:
    """Conversion with quantization in a child process: seconds and peak resident memory (VmHWM)."""
    code = ("import json, sys, time; from pathlib import Path; import model; "
            "from bench.int8 import _load; started = time.perf_counter(); "
            "_, report = _load(Path(sys.argv[1]), Path(sys.argv[2]), 'int8'); "
            "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')); "
            "print(json.dumps({'seconds': time.perf_counter() - started, 'source': report.source, "
            "'peak_rss_gib': peak / 2**20}))")
    done = subprocess.run([sys.executable, "-c", code, str(directory), str(cache)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    checkpoint = sum(f.stat().st_size for f in directory.iterdir() if f.suffix in (".safetensors", ".bin"))
    result["checkpoint_gib"] = checkpoint / 2**30
    result["peak_over_checkpoint"] = result["peak_rss_gib"] / result["checkpoint_gib"]
    return result


def speed(args: argparse.Namespace) -> dict:
    import paddle

    paddle.set_grad_enabled(False)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    fresh = args.scratch / "int8-cache"
    output: dict = {"first_start_int8": first_start(directory, fresh)}
    storages = [s for s in STORAGES if s != "float32" or args.float32]
    models, resident = {}, {}
    for storage in storages:
        before = resident_gib()
        models[storage], report = _load(directory, fresh if storage == "int8" else args.cache, storage)
        resident[storage] = {"added_gib": resident_gib() - before, "source": report.source}
    output["resident"] = resident
    prompt_blocks = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    longest = 64
    own = -(-(CONTEXT + longest + 1) // BLOCK) - CONTEXT // BLOCK
    work = {}
    for storage, janus in models.items():
        cache = janus.new_cache(2 * prompt_blocks + max(args.rows) * own, BLOCK)
        table = list(range(prompt_blocks))
        one_image_prefill(janus, cache, table)
        work[storage] = (janus, cache, table, list(range(prompt_blocks, 2 * prompt_blocks)))
    times: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in models}
    for round_ in range(args.rounds + 1):
        order = storages[round_ % len(storages):] + storages[:round_ % len(storages)]
        for rows in args.rows:
            for storage in order:
                janus, cache, table, _ = work[storage]
                tables = decode_tables(table, rows, CONTEXT, longest, prompt_blocks * 2)
                taken = float(np.median([decode_step(janus, cache, tables, CONTEXT + i) for i in range(3)]))
                if round_:
                    times[storage][f"decode {rows} rows"].append(taken)
        for storage in order:
            janus, cache, _, prefill_table = work[storage]
            vision, language = one_image_prefill(janus, cache, prefill_table)
            if round_:
                times[storage]["one-image prefill"].append(vision + language)
    output["ms"] = {s: {k: round(1e3 * float(np.median(v)), 1) for k, v in times[s].items()} for s in storages}
    ratios = {k: np.array(v) / np.array(times["bf16"][k]) for k, v in times["int8"].items()}
    output["int8_over_bf16"] = {k: round(float(np.median(r)), 3) for k, r in ratios.items()}
    output["int8_over_bf16_quartiles"] = {k: [round(float(q), 3) for q in np.quantile(r, [0.25, 0.75])]
                                          for k, r in ratios.items()}
    output["rounds"] = args.rounds
    if args.profile:
        output["profile_ms"] = {storage: profile(work[storage], args.rows, longest, prompt_blocks)
                                for storage in storages}
    return output


def profile(work: tuple, row_counts: list[int], longest: int, prompt_blocks: int) -> dict:
    """Where one decode step's time goes, for each row count (median of three steps, ms): `projections` is the
    weight products of the decoder layers, the part whose bytes int8 halves; the rest of the step (attention over
    the float32 keys and values, norms, the generation head, Python) costs each storage about the same."""
    from bench.many_rows import profile_step

    janus, cache, table, _ = work
    result = {}
    for rows in row_counts:
        tables = decode_tables(table, rows, CONTEXT, longest, prompt_blocks * 2)
        parts = [profile_step(janus, cache, tables) for _ in range(3)]
        result[f"decode {rows} rows"] = {part: round(1e3 * float(np.median([p[part] for p in parts])), 1)
                                         for part in parts[0]}
    return result


def crossover(args: argparse.Namespace) -> dict:
    import paddle

    from model.cpu_kernels import int8

    paddle.set_grad_enabled(False)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    janus, _ = _load(directory, args.scratch / "int8-cache", "int8")
    prompt_blocks = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    own = -(-(CONTEXT + 64 + 1) // BLOCK) - CONTEXT // BLOCK
    row_counts = args.rows or list(range(1, 9))
    cache = janus.new_cache(prompt_blocks + max(row_counts) * own, BLOCK)
    table = list(range(prompt_blocks))
    one_image_prefill(janus, cache, table)
    times: dict[str, dict[int, list[float]]] = {"streaming": defaultdict(list), "blocked": defaultdict(list)}
    saved = int8.ROWS_MAX
    try:
        for round_ in range(args.rounds + 1):
            for kernel in (("streaming", "blocked") if round_ % 2 else ("blocked", "streaming")):
                int8.ROWS_MAX = max(row_counts) if kernel == "streaming" else 0
                for rows in row_counts:
                    tables = decode_tables(table, rows, CONTEXT, 64, prompt_blocks)
                    taken = float(np.median([decode_step(janus, cache, tables, CONTEXT + i) for i in range(3)]))
                    if round_:
                        times[kernel][rows].append(taken)
    finally:
        int8.ROWS_MAX = saved
    return {kernel: {f"{rows} rows ms": round(1e3 * float(np.median(v)), 1) for rows, v in by_rows.items()}
            for kernel, by_rows in times.items()}


# quality


def _rows_of(janus, count: int, length: int):  # noqa: ANN001, ANN202
    blocks = -(-length // BLOCK)
    return janus.new_cache(count * blocks, BLOCK), [list(range(i * blocks, (i + 1) * blocks)) for i in range(count)]


def _prompts(directory: Path, janus) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:  # noqa: ANN001
    """(understanding ids, pixels, generation ids, image id, pad id) from the checkpoint's own tokenizer."""
    from model.chat_template import expand_image_ids, generation_prompt, place_images, understanding_prompt
    from model.tokenizer import JanusTokenizer

    tok = JanusTokenizer.from_dir(directory)
    text = understanding_prompt(place_images("<image_placeholder>\nWhat is in this picture? Describe it."),
                                "deepseek").text
    ids = expand_image_ids(tok.encode(text), tok.image_id, tok.boi_id, tok.eoi_id, janus.cfg.vision.num_tokens)
    size = janus.cfg.vision.image_size
    y, x = np.mgrid[0:size, 0:size] / size
    photo = np.stack([np.sin(3 * x + 1), np.cos(2 * y), np.sin(4 * x * y + 2)]) * 0.6
    pixels = (photo + np.random.default_rng(0).normal(0, 0.1, photo.shape))[None].astype(np.float32)
    generate = tok.encode(generation_prompt("a red circle on a blue background").text)
    return np.array(ids), pixels, np.array(generate), tok.image_id, tok.pad_id


def _text_logits(janus, ids: np.ndarray, pixels: np.ndarray, image_id: int, answer: list[int]) -> np.ndarray:  # noqa: ANN001
    """Logits of the text head at the prompt's last position and after each answer token, in one prefill."""
    import paddle

    from model.kv_cache import RowBatch

    full = np.concatenate([ids, answer[:-1]]).astype(np.int64)
    embeds = janus.embed_prompt(paddle.to_tensor(full[None]), janus.encode_images(paddle.to_tensor(pixels)),
                                image_id)
    cache, tables = _rows_of(janus, 1, len(full))
    hidden = janus.extend(embeds, cache, RowBatch.of(tables, [0]))
    return janus.text_logits(hidden[0, len(ids) - 1:]).numpy()


def _image_logits(janus, rows: np.ndarray, tokens: list[int], cfg_weight: float) -> np.ndarray:  # noqa: ANN001
    """Guided image logits at the prompt's last position and after each image token, in one prefill of both rows."""
    import paddle

    from model.kv_cache import RowBatch
    from model.sampling import guided_logits

    text = janus.embed_text(paddle.to_tensor(rows, dtype="int64"))
    image = janus.embed_image_tokens(paddle.to_tensor([tokens[:-1]] * 2, dtype="int64"))
    embeds = paddle.concat([text, image], axis=1)
    cache, tables = _rows_of(janus, 2, embeds.shape[1])
    hidden = janus.extend(embeds, cache, RowBatch.of(tables, [0, 0]))
    T = rows.shape[1]
    logits = janus.image_logits(hidden[:, T - 1:].reshape([-1, hidden.shape[-1]])).numpy()
    per_row = logits.reshape(2, -1, logits.shape[-1])
    return guided_logits(per_row[0], per_row[1], cfg_weight)


def _greedy_text(janus, ids: np.ndarray, pixels: np.ndarray, image_id: int, steps: int) -> list[int]:  # noqa: ANN001
    import paddle

    from model.kv_cache import RowBatch

    embeds = janus.embed_prompt(paddle.to_tensor(ids[None].astype(np.int64)),
                                janus.encode_images(paddle.to_tensor(pixels)), image_id)
    cache, tables = _rows_of(janus, 1, len(ids) + steps)
    hidden = janus.extend(embeds, cache, RowBatch.of(tables, [0]), last_only=True)
    out: list[int] = []
    for step in range(steps):
        out.append(int(janus.text_logits(hidden[:, -1]).numpy()[0].argmax()))
        if step < steps - 1:
            hidden = janus.extend(janus.embed_text(paddle.to_tensor([[out[-1]]], dtype="int64")), cache,
                                  RowBatch.of(tables, [len(ids) + step]))
    return out


def _greedy_image(janus, rows: np.ndarray, steps: int, cfg_weight: float) -> list[int]:  # noqa: ANN001
    import paddle

    from model.kv_cache import RowBatch
    from model.sampling import guided_logits

    T = rows.shape[1]
    cache, tables = _rows_of(janus, 2, T + steps)
    hidden = janus.extend(janus.embed_text(paddle.to_tensor(rows, dtype="int64")), cache,
                          RowBatch.of(tables, [0, 0]), last_only=True)
    out: list[int] = []
    for step in range(steps):
        logits = janus.image_logits(hidden[:, -1]).numpy()
        out.append(int(guided_logits(logits[0:1], logits[1:2], cfg_weight)[0].argmax()))
        if step < steps - 1:
            both = paddle.to_tensor([out[-1]] * 2, dtype="int64")
            hidden = janus.extend(janus.embed_image_tokens(both).unsqueeze(1), cache,
                                  RowBatch.of(tables, [T + step] * 2))
    return out


def _compare(reference: np.ndarray, ours: np.ndarray, reference_tokens: list[int], free: list[int]) -> dict:
    agree = reference.argmax(axis=-1) == ours.argmax(axis=-1)
    parted = next((i for i, (a, b) in enumerate(zip(reference_tokens, free, strict=True)) if a != b), None)
    return {"steps": len(reference_tokens),
            "max_relative_logit_error": float(np.abs(reference - ours).max() / np.abs(reference).max()),
            "teacher_forced_greedy_agreement": float(agree.mean()),
            "free_running_steps_before_first_difference": len(free) if parted is None else parted}


def quality(args: argparse.Namespace) -> dict:
    import paddle

    from model.reference import generation_rows

    paddle.set_grad_enabled(False)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    cache = args.scratch / "cache"
    reference, _ = _load(directory, cache, "bf16")
    quantized, _ = _load(directory, cache, "int8")
    ids, pixels, generate, image_id, pad_id = _prompts(directory, reference)
    steps = min(args.steps, reference.cfg.gen_vision.num_tokens)
    result = {"checkpoint": str(directory), "cfg_weight": 5.0}
    answer = _greedy_text(reference, ids, pixels, image_id, args.steps)
    result["understanding"] = _compare(_text_logits(reference, ids, pixels, image_id, answer),
                                       _text_logits(quantized, ids, pixels, image_id, answer), answer,
                                       _greedy_text(quantized, ids, pixels, image_id, args.steps))
    rows = np.stack(generation_rows(generate, pad_id))
    drawn = _greedy_image(reference, rows, steps, 5.0)
    result["image tokens"] = _compare(_image_logits(reference, rows, drawn, 5.0),
                                      _image_logits(quantized, rows, drawn, 5.0), drawn,
                                      _greedy_image(quantized, rows, steps, 5.0))
    return result


# group sizes


def groups(args: argparse.Namespace) -> dict:
    import paddle

    from model import cpu_kernels
    from model.checkpoint import safetensors_io
    from model.cpu_kernels import int8
    from model.demo import demo_model_dir

    def weights(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
        """The language model's and generation head's projections whose names end so, [in, out] float32."""
        tensors = safetensors_io.SafetensorsFile(path)
        out = []
        for name in tensors.shapes():
            if name.startswith(("language_model.", "gen_head.")) and name.endswith(names) \
                    and len(tensors.shapes()[name]) == 2:
                arr, code = tensors.read(name)
                arr = (arr.astype(np.uint32) << 16).view(np.float32) if code == "BF16" else arr.astype(np.float32)
                out.append(np.ascontiguousarray(arr.T))  # [in, out], the layout the kernels take
        return out

    projections = ("proj.weight", "lm_head.weight")
    trained = weights(demo_model_dir() / "model.safetensors", projections)
    directory = args.dir or build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    # four layers' worth (about 110 MB as int8, more than the 32 MiB L3): the timings read them from memory
    big = weights(directory / "model.safetensors", tuple(f"layers.{i}.{part}.weight" for i in range(4) for part in
                                                         ("mlp.down_proj", "mlp.up_proj", "self_attn.q_proj")))
    rng = np.random.default_rng(0)
    lib = cpu_kernels.library()
    result = {}
    for group in (32, 64, 128, 0):
        row: dict[str, float] = {}
        for label, ws in (("demo (trained)", trained), ("1B (random)", big)):
            num = den = 0.0
            for w in ws:
                g = group or -(-w.shape[0] // 8) * 8
                q, s = int8.quantize(w, g)
                x = rng.standard_normal((4, w.shape[0])).astype(np.float32)
                exact = x.astype(np.float64) @ w
                num += float(((x.astype(np.float64) @ int8.dequantize(q, s, g) - exact) ** 2).sum())
                den += float((exact**2).sum())
            row[f"{label} relative rms error"] = (num / den) ** 0.5
        held = []
        for w in big:
            g = group or -(-w.shape[0] // 8) * 8
            q, s = int8.quantize(w, g)
            held.append((g, w.shape, paddle.to_tensor(int8.pair_rows(q)), paddle.to_tensor(s)))  # as the kernels read
        for rows in (1, 2):
            calls = []
            for g, (K, N), q, s in held:
                x = paddle.to_tensor(rng.standard_normal((rows, K)).astype(np.float32))
                out = paddle.empty([rows, N], "float32")
                calls.append(((x, out), (x.data_ptr(), q.data_ptr(), s.data_ptr(), g, None, out.data_ptr(), rows, K,
                                         N)))
            runs = []
            for _ in range(11):
                started = time.perf_counter()
                for _, call in calls:
                    lib.janus_linear_rows_int8(*call)
                runs.append(time.perf_counter() - started)
            row[f"1B layers 0-3 q/up/down products, {rows} rows ms"] = round(1e3 * float(np.median(runs[1:])), 3)
        result["per channel" if group == 0 else f"groups of {group}"] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="default: a random 1B checkpoint in the temp folder")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "janus-bench-cache",
                        help="converted cache of the bf16 and float32 loads")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="default: 1 2 8 32 (crossover: 1-8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-float32", dest="float32", action="store_false")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--steps", type=int, default=256, help="quality: greedy steps")
    parser.add_argument("--groups", action="store_true")
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="speed: also where a decode step's time goes, per storage and row count")
    args = parser.parse_args()
    if args.rows is None and not args.crossover:
        args.rows = [1, 2, 8, 32]
    started = time.time()
    mode = quality if args.quality else groups if args.groups else crossover if args.crossover else speed
    # the int8 caches (2.6 GiB for the 1B shape) are made for this run and go with it, also when it fails
    with tempfile.TemporaryDirectory(prefix="janus-int8-bench-") as scratch:
        args.scratch = Path(scratch)
        result = mode(args)
    result["load_average"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
