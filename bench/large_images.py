"""Large images against the demo checkpoint's server: what one request, then six at once, of 8 data-URL images of
a 6000 x 6000 PNG (36 MP, under the 40 MP limit) do to the server's resident memory, and how long the refusal
takes (8 images of 578 positions cannot fit the demo's 2048-token context); then the same with 3 such
images, which fit and are answered.

    python -m bench.large_images [--source CHECKOUT]

Prints one JSON object: RSS (MiB) before each burst, its peak during the burst, a few seconds after it, and the
seconds to the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

import model  # noqa: F401
from bench.service_load import server_process
from model.tiny_checkpoint import demo_checkpoint_dir

SIDE = 6000
IMAGES = 8
FITTING_IMAGES = 3  # 3 x 578 positions and the prompt fit the demo's 2048-token context
SETTLE_S = 5.0


def large_png(side: int = SIDE) -> bytes:
    """Two crossing gradients with shapes on them: compresses to a few hundred kB, not a single colour."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (side, side)).astype(np.uint8)
    green = np.broadcast_to(ramp[:, None], (side, side)).astype(np.uint8)
    image = Image.fromarray(np.stack([red, green, red // 2 + green // 2], axis=-1))
    draw = ImageDraw.Draw(image)
    step = side // 12
    for i in range(12):
        draw.ellipse((i * step, i * step, i * step + 2 * step, i * step + step), fill=(255 - 20 * i, 20 * i, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def chat_body(png: bytes, images: int = IMAGES) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    parts = [{"type": "text", "text": "What do these show?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for _ in range(images)]
    return {"model": "janus", "messages": [{"role": "user", "content": parts}], "max_tokens": 2}


class RssWatch:
    """Samples the server's VmRSS from /proc every 10 ms on a thread; `peak` since the last `reset`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.01)

    def reset(self) -> None:
        self.peak = self.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def burst(base: str, body: dict, count: int) -> tuple[list[int], float]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(count)))
        return [r.status_code for r in replies], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="the checkout whose server to run")
    args = parser.parse_args()
    body = chat_body(large_png())
    mib = 2**20
    log = Path(tempfile.gettempdir()) / "janus-large-images-server.log"
    result: dict = {"png_bytes": len(large_png()), "body_bytes": len(json.dumps(body))}
    fitting = chat_body(large_png(), FITTING_IMAGES)
    # The same six answers with small images first: the engine's own memory (KV blocks first written, prefill
    # buffers) grows then, so that what the large ones add is the images'.
    runs = [("refused_1", body, 1), ("refused_6", body, 6), ("small_answered_6", chat_body(large_png(64), 3), 6),
            ("answered_1", fitting, 1), ("answered_6", fitting, 6)]
    with server_process(demo_checkpoint_dir(), 32, 2048, log, args.source) as (base, proc):
        watch = RssWatch(proc.pid)
        try:
            for name, payload, count in runs:
                watch.reset()
                before = watch.rss()
                statuses, seconds = asyncio.run(burst(base, payload, count))
                peak = watch.peak
                time.sleep(SETTLE_S)
                result[name] = {
                    "statuses": statuses, "seconds": round(seconds, 2), "rss_before_mib": round(before / mib),
                    "rss_peak_mib": round(max(peak, watch.peak) / mib), "rss_after_mib": round(watch.rss() / mib)}
        finally:
            watch.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
