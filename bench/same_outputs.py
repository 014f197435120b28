"""One fixed mixed workload against the servers of two checkouts, and whether every answer came out the same.

    python -m bench.same_outputs --before /path/to/old [--after /path/to/new] [--preset tiny]

The workload: greedy and seeded understanding (plain and streamed, with history), a repeated question and a
conversation that reuse cached prompt blocks, chat completions with several answers, stop texts and log-probabilities
(plain and streamed), generations with and without guidance (plain and streamed, with previews), OpenAI image
generations, and a burst of requests admitted together that leave the batch in one step. Each checkout serves it from
a fresh server on the same checkpoint, one after the other. Everything a client receives is compared: response
bodies and every stream event, images included, byte for byte, with only what differs by nature (request ids,
timestamps, timings) left out. The last line is one JSON object: `{"identical": true, ...}` or the first
differences.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

import model  # noqa: F401
from bench.service_load import server_process
from bench.workload import test_image
from model.runtime_env import cache_root

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"id", "created", "created_at", "timings"}  # differ between any two runs of the same checkout


def _image(seed: int) -> str:
    """A noisy photo-like PNG (a gradient with noise), as a data URL."""
    return "data:image/png;base64," + base64.b64encode(test_image(seed, size=64)).decode()


def _understand(question: str, image: int | None, **options: Any) -> dict:
    return {"question": question, "images": [] if image is None else [_image(image)], **options}


def _chat(text: str, image: int | None = None, **options: Any) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": _image(image)}})
    return {"model": "any", "messages": [{"role": "user", "content": content}], **options}


# (name, path, body); a stage's requests are sent together, stages one after another. Log-probabilities are only
# asked for alone: the rows that share a step follow arrival times, and a float's last bits may follow the rows.
STAGES: list[list[tuple[str, str, dict]]] = [
    [("understand greedy", "/understand", _understand("What is in this picture?", 1, seed=1, max_new_tokens=24)),
     ("understand seeded", "/understand", _understand("Describe it.", 2, temperature=0.9, seed=7,
                                                      max_new_tokens=24)),
     ("understand text only, streamed", "/understand/stream", _understand("Say something.", None, temperature=0.7,
                                                                          seed=3, max_new_tokens=20))],
    [("understand repeated (prefix cache)", "/understand", _understand("What is in this picture?", 1, seed=1,
                                                                        max_new_tokens=24)),
     ("understand with history", "/understand/stream",
      _understand("And the colours?", 2, temperature=0.9, seed=7, max_new_tokens=16,
                  history=[{"question": "<image_placeholder>Describe it.", "answer": "A picture."}]))],
    [("chat n=3, stop texts, logprobs", "/v1/chat/completions",
      _chat("Tell me about it.", 3, n=3, temperature=1.0, seed=11, max_tokens=24, stop=["e", "a b"], logprobs=True,
            top_logprobs=3))],
    [("chat streamed, stop texts, logprobs, usage", "/v1/chat/completions",
      _chat("Tell me about it.", 3, n=2, temperature=1.2, seed=12, max_tokens=24, stop=["o", "th"], logprobs=True,
            top_logprobs=2, stream=True, stream_options={"include_usage": True}))],
    [("chat greedy, no image", "/v1/chat/completions", _chat("Hello there.", seed=1, max_tokens=16,
                                                             logprobs=True))],
    [("generate guided", "/generate", {"prompt": "a red fox", "parallel_size": 2, "seed": 5, "format": "png"}),
     ("generate streamed with previews", "/generate/stream",
      {"prompt": "a lighthouse", "parallel_size": 1, "seed": 6, "format": "png", "previews": 1}),
     ("generate unguided", "/generate", {"prompt": "three apples", "parallel_size": 2, "cfg_weight": 1.0,
                                         "temperature": 0.0, "seed": 8, "format": "png"}),
     ("v1 images streamed", "/v1/images/generations",
      {"prompt": "a city street", "n": 2, "seed": 9, "stream": True, "partial_images": 1}),
     ("understand beside generations", "/understand", _understand("What now?", 4, temperature=0.5, seed=4,
                                                                  max_new_tokens=24))],
    # admitted together, the same length: they leave the batch in the same step
    [(f"burst {i}", "/understand", _understand("Go on.", 10 + i, temperature=0.8, seed=20 + i, max_new_tokens=12))
     for i in range(4)] +
    [(f"burst image {i}", "/generate", {"prompt": "a cat", "parallel_size": 1, "seed": 30 + i, "format": "png"})
     for i in range(2)],
]


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _events(text: str) -> list[Any]:
    """An SSE body -> [(event name, data)]."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
        payload = "\n".join(data)
        out.append([name, payload if payload == "[DONE]" else _normal(json.loads(payload))])
    return out


async def _send(client: httpx.AsyncClient, base: str, path: str, body: dict) -> Any:
    reply = await client.post(base + path, json=body)
    streamed = reply.headers.get("content-type", "").startswith("text/event-stream")
    return {"status": reply.status_code, "body": _events(reply.text) if streamed else _normal(reply.json())}


async def _workload(base: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=600) as client:
        for stage in STAGES:
            replies = await asyncio.gather(*(_send(client, base, path, body) for _, path, body in stage))
            results.update({name: reply for (name, _, _), reply in zip(stage, replies, strict=True)})
    return results


def run(source: Path, model_dir: Path, log: Path) -> dict[str, Any]:
    with server_process(model_dir, max_rows=32, max_seq_len=1024, log_path=log, source=source) as (base, _):
        return asyncio.run(_workload(base))


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [name for name in before if json.dumps(before[name], sort_keys=True) != json.dumps(after.get(name),
                                                                                               sort_keys=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the older checkout")
    parser.add_argument("--after", type=Path, default=ROOT, help="the newer checkout (default: this one)")
    parser.add_argument("--preset", default="tiny", help="the random checkpoint both serve (tiny, bench, demo)")
    parser.add_argument("--save", type=Path, help="write both sides' outputs here (JSON)")
    args = parser.parse_args()
    from model.tiny_checkpoint import build_tiny_checkpoint, demo_checkpoint_dir

    if args.preset == "demo":
        model_dir = demo_checkpoint_dir()
    else:
        model_dir = cache_root() / f"same-outputs-{args.preset}"
        if not (model_dir / "config.json").exists():
            build_tiny_checkpoint(model_dir, preset=args.preset, seed=0)
    sides = {}
    for label, source in (("before", args.before.resolve()), ("after", args.after.resolve())):
        log = Path(tempfile.gettempdir()) / f"janus-same-outputs-{label}.log"
        sides[label] = run(source, model_dir, log)
        print(f"{label}: {len(sides[label])} requests answered", file=sys.stderr, flush=True)
    if args.save:
        args.save.write_text(json.dumps(sides, indent=1, sort_keys=True))
    differing = differences(sides["before"], sides["after"])
    statuses = {name: reply["status"] for name, reply in sides["after"].items()}
    print(json.dumps({"identical": not differing, "requests": len(sides["before"]), "differing": differing,
                      "statuses": statuses}))


if __name__ == "__main__":
    main()
