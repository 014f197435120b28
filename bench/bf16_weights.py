"""bf16-stored weights (JANUS_DTYPE=auto on the CPU) against float32 weights, side by side in one run, on random
weights in the published layouts.

    python -m bench.bf16_weights --torch-python PATH                # Janus-Pro-1B shape: pytorch_model.bin
    python -m bench.bf16_weights --size 7B --torch-python PATH      # Janus-Pro-7B shape: two .bin shards + index
    python -m bench.bf16_weights --size 7B --quantization int8 --torch-python PATH   # 7B: bf16 and int8 weights

1B: for each storage, a first start (conversion into a fresh cache) and its peak resident memory, then a later
start timing decode steps, a one-image prefill and one image's VQ decoding (`bench.fullsize`), each in a fresh
process (load time and memory come from these); then both storages in one process taking turns
(`bench.bf16_alternating`): the prefill and decode-step ratios measured side by side. Ratios bf16 / float32.
7B (bf16 only: float32 weights, 28 GB, do not fit in 24 GiB): first and later start, prefill, a 2-row decode step
against the bandwidth floor, and a `janus-serve` process answering one understanding and one generation request,
with its peak resident memory. `--keep` leaves the checkpoint on disk (the 7B one takes about 15 GB and several
minutes to write); `--work DIR` keeps the converted cache there, which a later `--serve-only` run reuses.
7B with `--quantization int8`: the same first start, later start and 2-row step for int8 weights (JANUS_QUANTIZATION=
int8) after the bf16 ones, each in its own process (both at once do not fit in 24 GiB), and the server run with int8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import model  # noqa: F401
from bench.big_checkpoint import build, build_sharded
from bench.service_load import server_process
from bench.workload import generate_jobs, understand_jobs

FIRST_START = """
import json, resource, sys, time
import model
from pathlib import Path
from model.checkpoint.loader import load_janus
m, report = load_janus(sys.argv[1], cache_dir=Path(sys.argv[2]), keep_bf16=sys.argv[3] != "float32",
                       quantization="int8" if sys.argv[3] == "int8" else "none")
print(json.dumps({"load_s": report.seconds, "source": report.source, "weights": report.weights,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _last_json(command: list[str]) -> dict:
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_start(directory: Path, cache: Path, weights: str) -> dict:
    """Conversion into a fresh cache in a child process; `weights` is bfloat16, float32 or int8."""
    shutil.rmtree(cache, ignore_errors=True)
    return _last_json([sys.executable, "-c", FIRST_START, str(directory), str(cache), weights])


def later_start(directory: Path, cache: Path, weights: str, size: str, rows: list[int], vq: bool,
                prefills: int) -> dict:
    command = [sys.executable, "-m", "bench.fullsize", "--size", size, "--dir", str(directory), "--cache", str(cache),
               "--rows", *map(str, rows), "--prefills", str(prefills)]
    command += ["--weights", "bfloat16", "--quantization", "int8"] if weights == "int8" else ["--weights", weights]
    return _last_json(command + (["--vq"] if vq else []))


def checkpoint_gib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".bin", ".safetensors")) / 2**30


def serve_once(directory: Path, cache_root: Path, log: Path, quantization: str = "none") -> dict:
    """One understanding and one generation request through a real server, one after the other."""
    env = {"JANUS_CACHE_DIR": str(cache_root), "JANUS_DTYPE": "auto", "JANUS_REQUEST_TIMEOUT_S": "3600",
           "JANUS_QUANTIZATION": quantization}
    started = time.perf_counter()
    with server_process(directory, max_rows=4, max_seq_len=1024, log_path=log, extra_env=env,
                        ready_timeout_s=3600) as (base, proc):
        ready_s = time.perf_counter() - started
        with httpx.Client(base_url=base, timeout=3600) as http:
            info = http.get("/info").json()
            timings = {}
            for route, job in (("/understand", understand_jobs(1)[0]),
                               ("/generate", generate_jobs(1)[0])):
                body = job.body() | ({"parallel_size": 1} if route == "/generate" else {})
                sent = time.perf_counter()
                reply = http.post(route, json=body)
                reply.raise_for_status()
                timings[route] = time.perf_counter() - sent
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {"ready_s": ready_s, "weights": info["weights"], "quantization": info.get("quantization"),
            "understand_s": timings["/understand"],
            "generate_one_image_s": timings["/generate"], "server_peak_rss_gib": peak_kib / 2**20,
            "max_rows": 4, "max_seq_len": 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["1B", "7B"], default="1B")
    parser.add_argument("--torch-python", required=True, help="an interpreter with torch, to write .bin files")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=None)
    parser.add_argument("--quantization", choices=["none", "int8"], default="none",
                        help="7B: int8 weights too, after the bf16 ones, and the server run with them")
    parser.add_argument("--keep", action="store_true", help="keep the random checkpoint for another run")
    parser.add_argument("--no-serve", action="store_true", help="7B: skip the server run")
    parser.add_argument("--no-first-start", action="store_true", help="skip the first starts (conversion)")
    parser.add_argument("--serve-only", action="store_true", help="7B: only the server run")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the converted cache, kept (a later --serve-only run reuses it)")
    args = parser.parse_args()
    if args.quantization == "int8" and args.size != "7B":
        parser.error("--quantization int8 is for the 7B shape; python -m bench.int8 compares the 1B shape's storages")
    root = Path(tempfile.gettempdir())
    directory = args.dir or root / f"janus-{args.size.lower()}-random-bin"
    started = time.perf_counter()
    if args.size == "1B":
        build(directory, "1B", args.torch_python)
    else:
        build_sharded(directory, "7B", args.torch_python, shards=2)
    written_s = time.perf_counter() - started
    bench_root = args.work or Path(tempfile.mkdtemp(prefix="janus-bf16-bench-"))
    bench_root.mkdir(parents=True, exist_ok=True)
    # int8's first start empties the bf16 cache's folder (done with by then: the disk holds one 7B cache at a time)
    # and the server, which converts into <JANUS_CACHE_DIR>/converted, then finds the int8 weights there
    caches = {"bfloat16": bench_root / "converted", "float32": bench_root / "converted-float32",
              "int8": bench_root / "converted"}
    result: dict = {"size": args.size, "checkpoint_gib": checkpoint_gib(directory),
                    "files": sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".json")),
                    "checkpoint_written_s": written_s}
    try:
        storages = (["bfloat16", "float32"] if args.size == "1B" else
                    ["bfloat16", "int8"] if args.quantization == "int8" else ["bfloat16"])
        rows = args.rows or ([1, 2, 8, 32] if args.size == "1B" else [2])
        for weights in [] if args.serve_only else storages:
            first = {} if args.no_first_start else first_start(directory, caches[weights], weights)
            print(json.dumps({weights: {"first_start": first}}), file=sys.stderr, flush=True)
            later = later_start(directory, caches[weights], weights, args.size, rows, vq=args.size == "1B",
                                prefills=2 if args.size == "1B" else 1)
            result[weights] = {"first_start": first, "later_start": later}
            print(json.dumps({weights: result[weights]}), file=sys.stderr, flush=True)
        if args.size == "1B" and not args.serve_only:
            result["alternating"] = _last_json([
                sys.executable, "-m", "bench.bf16_alternating", "--dir", str(directory), "--rows", *map(str, rows),
                "--bfloat16-cache", str(caches["bfloat16"]), "--float32-cache", str(caches["float32"])])
            print(json.dumps({"alternating": result["alternating"]}), file=sys.stderr, flush=True)
            bf, fp = result["bfloat16"]["later_start"], result["float32"]["later_start"]
            result["bf16_over_float32"] = {
                **{f"decode_{r}_rows": bf["decode"][str(r)]["step_s"] / fp["decode"][str(r)]["step_s"] for r in rows},
                "prefill_one_image": bf["prefill_one_image_s"] / fp["prefill_one_image_s"],
                "vq_decode_one_image": bf["vq_decode_one_image_s"] / fp["vq_decode_one_image_s"],
                "peak_rss": bf["peak_rss_gib"] / fp["peak_rss_gib"],
                "rss_after_load": bf["rss_after_load_gib"] / fp["rss_after_load_gib"],
                "weights_in_memory": bf["weights_gib"] / fp["weights_gib"],
            }
            if not args.no_first_start:
                peaks = [result[w]["first_start"]["peak_rss_gib"] for w in ("bfloat16", "float32")]
                result["bf16_over_float32"]["first_start_peak_rss"] = peaks[0] / peaks[1]
        elif not args.no_serve:
            result["serve"] = serve_once(directory, bench_root, bench_root / "server.log", args.quantization)
            print(json.dumps({"serve": result["serve"]}), file=sys.stderr, flush=True)
        if "bfloat16" in result and not args.no_first_start:
            result["first_start_peak_over_checkpoint"] = (result["bfloat16"]["first_start"]["peak_rss_gib"]
                                                          / result["checkpoint_gib"])
    finally:
        if args.work is None:
            shutil.rmtree(bench_root, ignore_errors=True)
        if not args.keep and args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
