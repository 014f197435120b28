"""Speculative Jacobi decoding against plain decoding on the trained demo model: forwards per image, the time to
draw an image's tokens and the whole request's, at parallel_size 1 and 8, guidance 5, temperature 1.

    python -m bench.speculative [--rounds 3] [--windows 2 4 8] [--sizes 1 8] [--variants] [--model-dir DIR]
                                [--step-cost]

The engine serves the checkpoint in this process. Each round runs one request of every mode (plain, then each
window) with the round's seed, taking turns, so that a machine that speeds up or slows down moves them alike; the
first round warms up. Per mode: the request's forwards (the prefill included; each draws all its images), the acceptance
rate and tokens per image forward (from the engine's observer), and the median over rounds of the drawing time
(prefill and steps) and of the total (with the images' decoding). `--variants` adds each window with independent
drafts (fresh noise at every redraft) and as plain SJD (independent drafts, positions past the fed ones drafted
from the uniform distribution) beside the service's drafting. The load average is printed
beside every round; the last line is one JSON object.

`--step-cost` adds the Janus-Pro-1B shape (random weights, bf16 as JANUS_DTYPE=auto keeps them on the CPU): one step
of 2 and 16 rows each appending 1, 2, 4, 8, 16 positions and each window's (image logits at every one) after a
300-position prompt, median of a few, and from it and the demo model's tokens per image forward at parallel_size 1 an
estimate of the drawing time of one 576-token image at each window (the real model's acceptance is not measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import model  # noqa: F401  (runtime environment before paddle)
from service.engine.observer import NullObserver


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass
class _Counts(NullObserver):
    """The engine's observer: speculative steps' totals (every other event ignored, as NullObserver does)."""

    drafted: int = 0
    accepted: int = 0
    forwards: int = 0
    tokens: int = 0

    def on_speculation(self, drafted: int, accepted: int, forwards: int, tokens: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.forwards += forwards
        self.tokens += tokens


@dataclass
class _Mode:
    name: str
    window: int  # 0: plain
    coupled: bool = True
    carry: bool = True
    forwards: list[float] = field(default_factory=list)  # per request: each forward draws all its images
    draw_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    counts: _Counts = field(default_factory=_Counts)


def run(model_dir: Path, sizes: list[int], windows: list[int], rounds: int, variants: bool) -> dict:
    import paddle

    from model.chat_template import generation_prompt
    from model.checkpoint.loader import load_janus
    from model.tokenizer import JanusTokenizer
    from service.engine import Engine, EngineConfig
    from service.engine import engine as engine_module
    from service.engine.speculative import Speculation
    from service.engine.types import GenerateParams

    paddle.set_grad_enabled(False)
    janus, _ = load_janus(model_dir, cache_dir=False)
    tok = JanusTokenizer.from_dir(model_dir)
    prompts = json.loads((model_dir / "playground.json").read_text())["prompts"] if (
        model_dir / "playground.json").exists() else ["a red circle"]
    observer = _Counts()
    engine = Engine(janus, EngineConfig(max_rows=2 * max(sizes), max_seq_len=janus.cfg.gen_vision.num_tokens + 256),
                    observer=observer)
    engine.start()
    engine.warmup()
    modes_now: dict[str, _Mode] = {}

    def speculation_for(params, config, vocab):  # noqa: ANN001, ANN202 - the mode being measured decides
        mode = modes_now["mode"]
        return Speculation(params, mode.window, vocab, mode.coupled, mode.carry) if mode.window else None

    engine_module.speculation_for = speculation_for
    steps = janus.cfg.gen_vision.num_tokens
    results: dict[str, dict] = {}
    try:
        for size in sizes:
            modes = [_Mode("plain", 0)] + [_Mode(f"window {w}", w) for w in windows]
            if variants:
                modes += [_Mode(f"window {w} uncoupled", w, coupled=False) for w in windows]
                modes += [_Mode(f"window {w} SJD", w, coupled=False, carry=False) for w in windows]
            for round_ in range(rounds + 1):  # the first round warms up
                prompt = prompts[round_ % len(prompts)]
                ids = tok.encode(generation_prompt(prompt, "deepseek").text)
                for mode in modes:
                    params = GenerateParams(prompt_ids=ids, pad_id=tok.pad_id, image_tokens=steps,
                                            parallel_size=size, cfg_weight=5.0, temperature=1.0, seed=round_)
                    modes_now["mode"] = mode
                    before = _Counts(**vars(observer))
                    result = asyncio.run(_generate(engine, params))
                    t = result.timings
                    if round_:
                        mode.forwards.append(t.forward_passes)
                        mode.draw_s.append(t.prefill_s + t.decode_s)
                        mode.total_s.append(t.total_s - t.queued_s)
                        for name in ("drafted", "accepted", "forwards", "tokens"):
                            setattr(mode.counts, name,
                                    getattr(mode.counts, name) + getattr(observer, name) - getattr(before, name))
                    print(f"  parallel_size {size} round {round_} {mode.name:<20} {t.forward_passes:4d} forwards "
                          f"{t.prefill_s + t.decode_s:7.2f} s drawing {t.total_s - t.queued_s:7.2f} s in all "
                          f"({_load()})", flush=True)
            plain = modes[0]
            for mode in modes:
                c = mode.counts
                draw = statistics.median(mode.draw_s)
                results[f"parallel_size {size}, {mode.name}"] = {
                    "forwards": statistics.mean(mode.forwards),
                    "acceptance": c.accepted / c.drafted if c.drafted else None,
                    "tokens_per_image_forward": c.tokens / c.forwards if c.forwards else 1.0,
                    "draw_s": draw, "total_s": statistics.median(mode.total_s),
                    "fewer_forwards": statistics.mean(plain.forwards) / statistics.mean(mode.forwards),
                    "draw_speedup": statistics.median(plain.draw_s) / draw,
                }
    finally:
        engine.shutdown(drain_timeout_s=0)
    return results


async def _generate(engine, params):  # noqa: ANN001, ANN202
    return await engine.submit(params).result()


def step_cost_1b(rows_list: list[int], positions_list: list[int], repeats: int = 5) -> dict[str, dict[str, float]]:
    """Seconds of one step of the Janus-Pro-1B shape: rows x positions each appended after CONTEXT positions."""
    import tempfile
    import time

    import numpy as np
    import paddle

    from bench.big_checkpoint import build
    from bench.fullsize import BLOCK, ONE_IMAGE_PROMPT, decode_tables, one_image_prefill
    from model.checkpoint.loader import load_janus
    from model.kv_cache import RowBatch

    context = 300
    paddle.set_grad_enabled(False)
    directory = build(Path(tempfile.gettempdir()) / "janus-1b-random", "1B")
    janus, _ = load_janus(directory, cache_dir=Path(tempfile.gettempdir()) / "janus-bench-cache", keep_bf16=True)
    longest = max(positions_list)
    prompt_blocks = -(-len(ONE_IMAGE_PROMPT) // BLOCK)
    own = -(-(context + longest + 1) // BLOCK) - context // BLOCK
    cache = janus.new_cache(prompt_blocks + max(rows_list) * own, BLOCK)
    prompt_table = list(range(prompt_blocks))
    one_image_prefill(janus, cache, prompt_table)
    out: dict[str, dict[str, float]] = {}
    for rows in rows_list:
        tables = decode_tables(prompt_table, rows, context, longest, prompt_blocks)
        for positions in positions_list:
            times = []
            for _ in range(repeats + 1):  # the first warms up
                tokens = paddle.zeros([rows, positions], "int64")
                started = time.perf_counter()
                hidden = janus.extend(janus.embed_image_tokens(tokens), cache, RowBatch.of(tables, [context] * rows))
                janus.image_logits(hidden.reshape([-1, hidden.shape[-1]])).numpy()
                times.append(time.perf_counter() - started)
            step_s = float(np.median(times[1:]))
            out.setdefault(f"{rows} rows", {})[f"{positions} positions"] = step_s
            print(f"  1B shape: {rows} rows x {positions} positions: {1000 * step_s:8.1f} ms ({_load()})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variants", action="store_true", help="also each window uncoupled and as plain SJD")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the trained demo checkpoint")
    parser.add_argument("--step-cost", action="store_true", help="also the Janus-Pro-1B shape's step cost")
    args = parser.parse_args()
    from model.demo import demo_model_dir

    model_dir = args.model_dir or demo_model_dir()
    print(f"{model_dir}, cfg_weight 5, temperature 1 ({_load()})", flush=True)
    results = run(model_dir, args.sizes, args.windows, args.rounds, args.variants)
    print(f"{'':<36} {'forwards':>12} {'accept':>7} {'tok/fwd':>8} {'draw s':>8} {'total s':>8} "
          f"{'fewer fwd':>9} {'draw x':>7}")
    for name, r in results.items():
        accept = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        print(f"{name:<36} {r['forwards']:12.1f} {accept:>7} {r['tokens_per_image_forward']:8.2f} "
              f"{r['draw_s']:8.2f} {r['total_s']:8.2f} {r['fewer_forwards']:9.2f} {r['draw_speedup']:7.2f}")
    if args.step_cost:
        costs = step_cost_1b([2, 16], sorted({1, 2, 4, 8, 16, *(w + 1 for w in args.windows)}))
        plain_s = 576 * costs["2 rows"]["1 positions"]
        estimates = {"plain": plain_s}
        for w in args.windows:
            measured = results.get(f"parallel_size 1, window {w}")
            fed = f"{w + 1} positions"
            if measured and fed in costs["2 rows"]:
                estimates[f"window {w}"] = 576 / measured["tokens_per_image_forward"] * costs["2 rows"][fed]
        for name, seconds in estimates.items():
            print(f"1B shape, one image (2 rows), {name}: {seconds:7.1f} s estimated ({plain_s / seconds:.2f} x)")
        results["1B step_s"] = costs
        results["1B one image estimate_s"] = estimates
    print(_load())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
