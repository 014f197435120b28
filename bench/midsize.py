"""A mid-size backbone (0.3 B parameters, hidden 1024, 16 layers) where arithmetic, not per-op overhead, dominates:
steady-state image-token throughput of the reference loop (one request, parallel_size 2, PaddleNLP's own forward and
cache) against the engine's decode step with 8 such requests batched (32 rows), measured side by side.

    python -m bench.midsize [--steps 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

import model  # noqa: F401
from model.runtime_env import cache_root


def main() -> None:
    import paddle

    from model import reference
    from model.checkpoint.loader import load_janus
    from model.tiny_checkpoint import build_tiny_checkpoint
    from service.engine.block_manager import BlockManager
    from service.engine.request import Request, RequestHandle
    from service.engine.runner import Runner
    from service.engine.scheduler import Scheduler
    from service.engine.types import GenerateParams

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    paddle.set_grad_enabled(False)
    directory = cache_root() / "bench-checkpoint-mid"
    if not (directory / "config.json").exists():
        build_tiny_checkpoint(directory, preset="mid", seed=7)
    janus, report = load_janus(directory)
    prompt = np.arange(1, 24, dtype=np.int64)
    context = 300  # tokens already generated: the middle of a 576-token image

    # baseline: the reference loop's step, 2 conditional + 2 unconditional rows with a concatenating cache
    rows = np.stack([prompt, prompt] * 2)
    embeds = janus.embed_text(paddle.to_tensor(rows))
    positions = paddle.expand(paddle.arange(len(prompt), dtype="int64")[None], [4, len(prompt)])
    hidden, past = reference._forward(janus, embeds, positions, len(prompt), None)
    filler = janus.embed_image_tokens(paddle.zeros([4, context], "int64"))
    fill_pos = paddle.expand(paddle.arange(len(prompt), len(prompt) + context, dtype="int64")[None], [4, context])
    hidden, past = reference._forward(janus, filler, fill_pos, len(prompt) + context, past)
    length = len(prompt) + context
    timings = []
    for step in range(args.steps):
        started = time.perf_counter()
        token = janus.embed_image_tokens(paddle.zeros([4], "int64")).unsqueeze(1)
        hidden, past = reference._forward(janus, token, paddle.full([4, 1], length + step, "int64"),
                                          length + step + 1, past)
        janus.image_logits(hidden[:, -1]).numpy()
        timings.append(time.perf_counter() - started)
    baseline_step = float(np.median(timings[1:]))

    # engine: 8 requests x parallel_size 2 with guidance = 32 rows in one decode step
    scheduler = Scheduler(32, 0, BlockManager(32 * -(-(len(prompt) + 576) // 16), 16))
    runner = Runner(janus, scheduler.blocks.num_blocks, 16)
    loop = asyncio.new_event_loop()
    for i in range(8):
        params = GenerateParams(prompt.tolist(), 0, 576, 2, 5.0, 1.0, i)
        scheduler.add(Request(params=params, handle=RequestHandle(f"r{i}", loop)))
    while (plan := scheduler.schedule()).prefill:  # each request's prompts, then the first decode step
        scheduler.postprocess(plan, runner.run(plan))
    for row in plan.rows:  # as if 300 image tokens were done (their keys and values are moot)
        scheduler.blocks.ensure(row.table, length + 1)
        row.table.length = length
    timings = []
    for _ in range(args.steps):
        started = time.perf_counter()
        runner.forward(plan, {})
        timings.append(time.perf_counter() - started)
    engine_step = float(np.median(timings[1:]))
    print(json.dumps({
        "model": "mid (hidden 1024, 16 layers, random weights, float32)", "parameters": report.parameters,
        "context_tokens": length, "baseline_step_s_4_rows": baseline_step, "engine_step_s_32_rows": engine_step,
        "baseline_image_tokens_per_s": 2 / baseline_step, "engine_image_tokens_per_s": 16 / engine_step,
        "speedup_c8": (16 / engine_step) / (2 / baseline_step)}))


if __name__ == "__main__":
    main()
