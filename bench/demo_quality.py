"""The demo model's quality table, measured through the service over HTTP and judged by `training.judge` (numpy
and Pillow, not the model).

    python -m bench.demo_quality                    # the committed demo checkpoint, a server started here
    python -m bench.demo_quality --model-dir DIR    # another trained checkpoint (python -m training --out DIR)
    python -m bench.demo_quality --quantization int8  # the server holding int8 weights (JANUS_QUANTIZATION)
    python -m bench.demo_quality --seeds 32           # 32 seeds per prompt instead of 4 (a tighter estimate)

- generation: every colour x shape, four seeds each (`--seeds`), guidance 5 and temperature 1 (and guidance 1 for the
  colour: how much guidance matters); the requested colour and shape as the judge sees them;
- understanding: probe pictures drawn independently of the training data (`training.probes`: Pillow's named
  colours, other sizes, some not square, some JPEG, some drawn at 2x), three questions each;
- round trip: each guided image of the generation part is sent back with "What is in this picture?";
- time per image and per answer, one request at a time.
Writes bench/results/demo_quality.json (with each generated image's verdicts, in order, so that two runs on the
same seeds can be compared image by image) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from bench.service_load import server_process
from training.judge import judge
from training.probes import PROBE_COLOURS, PROBE_SHAPES, probes
from training.scenes import article

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (101, 102, 103, 104)  # not seeds the training used for anything


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(api: httpx.Client, prompt: str, seed: int, cfg_weight: float) -> Image.Image:
    reply = api.post("/generate", json={"prompt": prompt, "seed": seed, "cfg_weight": cfg_weight,
                                        "temperature": 1.0, "format": "png"})
    reply.raise_for_status()
    return Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]["data"]))).convert("RGB")


def ask(api: httpx.Client, picture: Image.Image, question: str) -> str:
    reply = api.post("/understand", json={"question": question, "images": [_png(picture)], "max_new_tokens": 24})
    reply.raise_for_status()
    return reply.json()["text"].lower()


def names(text: str, word: str) -> bool:
    return f" {word} " in f" {text.replace('.', ' ').replace(',', ' ')} "


def measure(base: str, seeds: tuple[int, ...] = SEEDS, workers: int = 8) -> dict:
    api = httpx.Client(base_url=base, timeout=600)
    pool = ThreadPoolExecutor(workers)  # requests in flight together: the engine batches them
    out: dict = {}

    # generation
    asks = [(c, s, seed) for c in PROBE_COLOURS for s in PROBE_SHAPES for seed in seeds]
    guided = list(pool.map(lambda a: generate(api, f"{article(a[0])} {a[0]} {a[1]}", a[2], 5.0), asks))
    unguided = list(pool.map(lambda a: generate(api, f"{article(a[0])} {a[0]} {a[1]}", a[2], 1.0), asks))
    verdicts = [judge(p) for p in guided]
    verdicts_cfg1 = [judge(p) for p in unguided]
    out["generation"] = {
        "images": len(asks),
        "colour": sum(v.colour == a[0] for v, a in zip(verdicts, asks, strict=True)) / len(asks),
        "shape": sum(v.shape == a[1] for v, a in zip(verdicts, asks, strict=True)) / len(asks),
        "colour_cfg1": sum(v.colour == a[0] for v, a in zip(verdicts_cfg1, asks, strict=True)) / len(asks),
        "shape_cfg1": sum(v.shape == a[1] for v, a in zip(verdicts_cfg1, asks, strict=True)) / len(asks),
        "asked": [list(a) for a in asks],
        "shape_right": [v.shape == a[1] for v, a in zip(verdicts, asks, strict=True)],
        "shape_right_cfg1": [v.shape == a[1] for v, a in zip(verdicts_cfg1, asks, strict=True)],
    }

    # understanding
    pictures = probes(4, seed=7)
    described = list(pool.map(lambda p: ask(api, p.picture, "What is in this picture?"), pictures))
    coloured = list(pool.map(lambda p: ask(api, p.picture, "What colour is the shape?"), pictures))
    shaped = list(pool.map(lambda p: ask(api, p.picture, "What shape is it?"), pictures))
    n = len(pictures)
    out["understanding"] = {
        "pictures": n,
        "describe_colour": sum(names(t, p.colour) for t, p in zip(described, pictures, strict=True)) / n,
        "describe_shape": sum(names(t, p.shape) for t, p in zip(described, pictures, strict=True)) / n,
        "colour_question": sum(names(t, p.colour) for t, p in zip(coloured, pictures, strict=True)) / n,
        "shape_question": sum(names(t, p.shape) for t, p in zip(shaped, pictures, strict=True)) / n,
        "examples": [{"drawn": f"{p.colour} {p.shape}, {p.how}", "answer": t}
                     for p, t in list(zip(pictures, described, strict=True))[:6]],
    }

    # round trip
    answers = list(pool.map(lambda p: ask(api, p, "What is in this picture?"), guided))
    both = [names(t, a[0]) and names(t, a[1]) for t, a in zip(answers, asks, strict=True)]
    out["round_trip"] = {"images": len(asks), "both_right": sum(both) / len(asks), "right": both}

    # time, one request at a time
    started = time.perf_counter()
    for seed in SEEDS:
        generate(api, "a red circle", seed, 5.0)
    out["seconds_per_image"] = (time.perf_counter() - started) / len(SEEDS)
    started = time.perf_counter()
    for p in pictures[:8]:
        ask(api, p.picture, "What is in this picture?")
    out["seconds_per_answer"] = (time.perf_counter() - started) / 8
    return out


def table(result: dict) -> str:
    g, u, r = result["generation"], result["understanding"], result["round_trip"]
    rows = [
        ("generation, requested colour (cfg 5)", g["colour"], g["images"]),
        ("generation, requested shape (cfg 5)", g["shape"], g["images"]),
        ("generation, requested colour (cfg 1)", g["colour_cfg1"], g["images"]),
        ("generation, requested shape (cfg 1)", g["shape_cfg1"], g["images"]),
        ("understanding, \"What is in this picture?\" names the colour", u["describe_colour"], u["pictures"]),
        ("understanding, \"What is in this picture?\" names the shape", u["describe_shape"], u["pictures"]),
        ("understanding, \"What colour is the shape?\"", u["colour_question"], u["pictures"]),
        ("understanding, \"What shape is it?\"", u["shape_question"], u["pictures"]),
        ("round trip: generated, then described with both right", r["both_right"], r["images"]),
    ]
    lines = ["| measure | result | of |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value:.0%} | {count} |" for name, value, count in rows]
    lines.append(f"| time per image (one request, guided) | {result['seconds_per_image']:.2f} s | |")
    lines.append(f"| time per answer (one request) | {result['seconds_per_answer']:.2f} s | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the committed demo checkpoint")
    parser.add_argument("--quantization", choices=["none", "int8"], default="none",
                        help="how the server holds the weights (JANUS_QUANTIZATION)")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per prompt (from 101 on)")
    args = parser.parse_args()
    from model.demo import demo_model_dir

    model_dir = args.model_dir or demo_model_dir()
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.quantization == "none" else f"_{args.quantization}") + (
        "" if args.seeds == len(SEEDS) else f"_{args.seeds}seeds")
    with server_process(model_dir, 32, 1024, RESULTS / f"server-demo-quality{suffix}.log",
                        extra_env={"JANUS_QUANTIZATION": args.quantization}) as (base, _):
        result = measure(base, tuple(range(SEEDS[0], SEEDS[0] + args.seeds)))
    result["model_dir"] = str(model_dir)
    result["quantization"] = args.quantization
    (RESULTS / f"demo_quality{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
