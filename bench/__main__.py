"""Baseline against service, side by side in one run on the same weights.

    python -m bench --quick      # tiny model, a few minutes; last line: one JSON object
    python -m bench              # + a mid-size model's decode step and the Janus-Pro-1B shape
    python -m bench --quick --before /path/to/old   # the service of an older checkout too, in the same run

Throughputs are measured one after the other on the same machine in the same run, and reported as ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import model  # noqa: F401
from bench import baseline
from bench.report import markdown, plot
from bench.service_load import drive, running_server
from bench.workload import generate_jobs, understand_jobs
from model.runtime_env import cache_root

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(latencies: list[float], wall_s: float, units: int) -> dict:
    return {"throughput": units / wall_s, "p50_s": float(np.percentile(latencies, 50)),
            "p95_s": float(np.percentile(latencies, 95)), "wall_s": wall_s, "requests": len(latencies)}


def serving_comparison(preset: str, levels_gen: list[int], levels_und: list[int], base_gen: int, base_und: int,
                       rounds: int, workloads: tuple[str, ...] = ("generate", "understand"),
                       before: Path | None = None, logs: Path = RESULTS) -> list[dict]:
    """`before`: an older checkout whose server serves the same load right before this one's (its rows are labelled
    `code: before`); `logs`: the folder of the servers' logs."""
    import paddle

    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import build_tiny_checkpoint
    from service.processing import Preprocessor

    directory = cache_root() / f"bench-checkpoint-{preset}"
    if not (directory / "config.json").exists():
        build_tiny_checkpoint(directory, preset=preset, seed=7)
    paddle.set_grad_enabled(False)
    janus, _ = load_janus(directory)
    max_seq_len = 768  # what these requests need (one image + question + 32 tokens; prompt + 576 image tokens)
    prep = Preprocessor.from_dir(directory, janus.cfg, max_seq_len)
    sections = []
    specs = {"generate": ("/generate", "images/s", generate_jobs, baseline.run_generate, levels_gen, base_gen, 2),
             "understand": ("/understand", "requests/s", understand_jobs, baseline.run_understand, levels_und,
                            base_und, 1)}
    # The baseline runs half before and half after the service, so that a machine that speeds up or slows down
    # during the run (these are shared machines) moves both sides of every ratio alike.
    jobs_of = {name: specs[name][2](specs[name][5]) for name in workloads}
    halves: dict[str, list[tuple[list[float], float]]] = {name: [] for name in workloads}

    def run_baseline_half(first: bool) -> None:
        for name in workloads:
            jobs = jobs_of[name]
            half = jobs[:len(jobs) // 2] if first else jobs[len(jobs) // 2:]
            started = time.perf_counter()
            latencies = specs[name][3](janus, prep, half)
            halves[name].append((latencies, time.perf_counter() - started))

    run_baseline_half(first=True)
    runs: dict[str, list[dict]] = {name: [] for name in workloads}
    max_rows = 2 * 2 * max(levels_gen) if "generate" in workloads else max(levels_und)
    sources = ([("before", before)] if before is not None else []) + [("after" if before else "", None)]
    for label, source in sources:
        with running_server(directory, max(max_rows, max(levels_und)), max_seq_len,
                            logs / f"server-{preset}{'-' + label if label else ''}.log", source) as base_url:
            for name in workloads:
                route, _, make_jobs, _, levels, _, per_request = specs[name]
                drive(base_url, route, make_jobs(1), 1)  # warm the HTTP path
                for level in levels:
                    jobs = make_jobs(level * rounds)
                    run = drive(base_url, route, jobs, level)
                    stats = _stats(run["latencies"], run["wall_s"], len(jobs) * per_request)
                    stats["concurrency"] = level
                    if label:
                        stats["code"] = label
                    model_s = np.array(run["server_model_s"])
                    stats["http_queue_overhead"] = float(np.mean((np.array(run["latencies"]) - model_s) / model_s))
                    runs[name].append(stats)
    run_baseline_half(first=False)

    for name in workloads:
        _, unit, _, _, _, count, per_request = specs[name]
        (first_lat, first_s), (second_lat, second_s) = halves[name]
        baseline_stats = _stats(first_lat + second_lat, first_s + second_s, count * per_request)
        rate_first = len(first_lat) * per_request / first_s
        rate_second = len(second_lat) * per_request / second_s
        baseline_stats["drift"] = rate_second / rate_first - 1  # after vs before the service ran
        print(f"[{preset}] baseline {name}: {baseline_stats['throughput']:.3f} {unit} "
              f"(before {rate_first:.3f}, after {rate_second:.3f})", file=sys.stderr)
        for stats in runs[name]:
            stats["speedup"] = stats["throughput"] / baseline_stats["throughput"]
            print(f"[{preset}] service {stats.get('code', '')} {name} c{stats['concurrency']}: "
                  f"{stats['throughput']:.3f} {unit} ({stats['speedup']:.2f}x)", file=sys.stderr)
        sections.append({"workload": name, "model": preset, "unit": unit, "baseline": baseline_stats,
                         "service": runs[name]})
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, a few minutes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--before", type=Path, help="an older checkout whose service to measure in the same run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [1, 4, 8, 16]
    started = time.perf_counter()
    # Each concurrency level serves `rounds` requests per client, so that it measures sustained throughput rather
    # than one burst.
    if args.quick:
        serving = serving_comparison("bench", levels, levels, base_gen=4, base_und=16, rounds=2, before=args.before,
                                     logs=args.out)
    else:
        serving = serving_comparison("bench", levels, levels, base_gen=6, base_und=24, rounds=3, before=args.before,
                                     logs=args.out)
    results: dict = {"quick": args.quick, "serving": serving}
    if not args.quick:
        # each in its own process: clean memory accounting, and the 1B model needs most of the machine
        for key, module in (("midsize", "bench.midsize"), ("fullsize", "bench.fullsize")):
            out = subprocess.run([sys.executable, "-m", module], check=True, capture_output=True, text=True)
            results[key] = json.loads(out.stdout.strip().splitlines()[-1])
    results["elapsed_s"] = time.perf_counter() - started

    def speedup(workload: str, level: int) -> float:
        section = next(s for s in serving if s["workload"] == workload and s["model"] == "bench")
        return next(s["speedup"] for s in section["service"] if s["concurrency"] == level and s.get("code") != "before")

    generate_c1 = next(s for s in next(s for s in serving if s["workload"] == "generate")["service"]
                       if s.get("code") != "before")
    summary = {"generate_speedup_c8": round(speedup("generate", 8), 2),
               "understand_speedup_c16": round(speedup("understand", 16), 2),
               "http_queue_overhead_c1": round(generate_c1["http_queue_overhead"], 4),
               "elapsed_s": round(results["elapsed_s"], 1)}
    tag = "quick" if args.quick else "full"
    (args.out / f"{tag}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{tag}.md").write_text(markdown(results))
    plot(results, args.out / f"{tag}.png")
    print(markdown(results))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
