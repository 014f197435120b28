"""Load time and resident memory of a 1B-shaped checkpoint: first start (conversion) and later starts (cache).

    python -m bench.load_time [--dir DIR] [--torch-python PATH]

Each measurement runs in a fresh process, so the numbers include imports and nothing is shared between runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import model  # noqa: F401
from bench.big_checkpoint import build

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import model
from pathlib import Path
from model.checkpoint.loader import load_janus
m, report = load_janus(sys.argv[1], cache_dir=Path(sys.argv[2]))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"load_s": report.seconds, "with_imports_s": time.perf_counter() - t0, "source": report.source,
                  "peak_rss_gib": rss, "parameters": report.parameters}))
"""


def measure(directory: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(cache)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "janus-1b-random")
    parser.add_argument("--torch-python", default=None, help="interpreter with torch, to write pytorch_model.bin")
    args = parser.parse_args()
    directory = build(args.dir, "1B", args.torch_python)
    cache = Path(tempfile.mkdtemp(prefix="janus-load-cache-"))
    try:
        first = measure(directory, cache)
        later = [measure(directory, cache) for _ in range(2)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    files = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".safetensors"))
    print(json.dumps({"checkpoint": files, "first_start": first, "later_starts": later}, indent=2))


if __name__ == "__main__":
    main()
