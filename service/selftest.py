"""`janus-serve self-test`: does this machine's device, in the configured dtype, compute what the CPU computes?

Builds a tiny random checkpoint (stored as bf16 when the CPU serves bf16 weights, `JANUS_DTYPE=auto`: the run under
test then computes from bf16 weights through the bf16 kernels and the reference from the same weights widened to
float32), then runs the same requests (one understanding request with a noise image, one
generation request with two guided images, both greedy and in flight together) through the serving engine twice:
on the configured device and dtype, and on the CPU in float32, the reference. Every step's logits are recorded on
their way out of the runner. The report gives, per request, the largest logit difference (relative to the
reference's largest logit) against a tolerance per dtype, whether the greedy tokens agree, and load, prefill and
decode-step timings; the exit status is 0 on a pass. With a random-weight checkpoint this checks the numerics of
every kernel the engine uses (vision encoder, prefill, cached decode, both heads, guidance, VQ decoding), not what
a trained model says.

With `--quantization int8` the run under test holds int8 weights (the language model's projections and the
generation head) and the reference is the same device and dtype with the weights unquantized: the report then gives
the quantization's own logit error and whether greedy decoding still agrees (on the GPU: Paddle's weight-only int8
kernels, which nothing else here exercises).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from model import runtime_env
from service.settings import Settings

if TYPE_CHECKING:
    from service.gpu_pool import DeviceMemory

log = logging.getLogger(__name__)

# Largest |logit difference| / largest |reference logit| that still passes, per dtype of the device run. float32 on
# a GPU may run its matmuls in TF32 (10-bit mantissa); half precisions round every activation.
TOLERANCES = {"float32": 2e-3, "float16": 2e-2, "bfloat16": 6e-2}
# int8 weights against the same weights unquantized, added to the dtype's own: on the CPU (groups of 64 rows) int8
# moved the tiny random checkpoint's logits by 1.3e-2 (understanding) and 2.9e-2 (generation) of the largest.
INT8_TOLERANCE = 5e-2
UNDERSTAND_TOKENS = 16
GENERATE_IMAGES = 2


@dataclass
class Trace:
    """One request's run: per step its raw logits, the logits its tokens were chosen from, and the tokens."""

    logits: list[np.ndarray] = field(default_factory=list)  # per step: [rows, V] as the runner returned them
    decisions: list[np.ndarray] = field(default_factory=list)  # per step: [choices, V] (generation: after guidance)
    tokens: list[list[int]] = field(default_factory=list)  # per step: one token per choice


@dataclass
class Comparison:
    request: str
    steps: int  # steps whose logits were compared (up to the first disagreement)
    max_abs_diff: float
    relative_diff: float  # max_abs_diff / largest |reference logit|
    tolerance: float
    tokens_agree: bool
    first_disagreement: int | None  # step index
    near_tie: bool  # the disagreement came where the reference's top two were within the logit error
    same_length: bool  # both runs produced every step (the requests have fixed lengths)

    @property
    def passed(self) -> bool:
        # Tokens can only part where the logit error reaches half the reference's top-two margin, so a parting at
        # a step whose logits are within the tolerance is a near-tie that rounding decides: reported, not failed.
        return self.relative_diff <= self.tolerance and self.same_length

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        tokens = "greedy tokens agree" if self.tokens_agree else (
            f"greedy tokens differ from step {self.first_disagreement}"
            + (" (a near-tie in the reference: within the logit error)" if self.near_tie else ""))
        if not self.same_length:
            tokens += "; the runs produced different numbers of steps"
        return (f"{self.request}: max |logit diff| {self.max_abs_diff:.3g} = {self.relative_diff:.2e} of the "
                f"reference's largest logit (tolerance {self.tolerance:.0e}) over {self.steps} steps; {tokens}: "
                f"{verdict}")


def _margin(row: np.ndarray) -> float:
    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])


def compare(request: str, reference: Trace, tested: Trace, tolerance: float) -> Comparison:
    """Step by step while both runs chose the same tokens (so fed the same inputs), and the step where they part."""
    steps = min(len(reference.logits), len(tested.logits))
    first = next((i for i, (a, b) in enumerate(zip(reference.tokens, tested.tokens, strict=False)) if a != b), None)
    if first is None and len(reference.tokens) != len(tested.tokens):
        first = min(len(reference.tokens), len(tested.tokens))  # one run stopped earlier
    compared = steps if first is None else min(steps, first + 1)
    diffs = [float(np.max(np.abs(reference.logits[i] - tested.logits[i]))) for i in range(compared)]
    scale = max((float(np.max(np.abs(reference.logits[i]))) for i in range(compared)), default=0.0)
    max_diff = max(diffs, default=0.0)
    near_tie = False
    if first is not None and first < min(len(reference.decisions), len(tested.decisions)):
        ref, test = reference.decisions[first], tested.decisions[first]
        error = float(np.max(np.abs(ref - test)))
        parted = [r for r in range(len(ref)) if int(np.argmax(ref[r])) != int(np.argmax(test[r]))]
        near_tie = bool(parted) and all(_margin(ref[r]) <= 2 * error for r in parted)
    return Comparison(request, compared, max_diff, max_diff / scale if scale else max_diff, tolerance,
                      first is None, first, near_tie, len(reference.tokens) == len(tested.tokens))


class RecordingRunner:
    """Stands in front of the engine's runner and keeps a copy of every logits array it returns, per request."""

    def __init__(self, runner: Any, labels: dict[str, str]) -> None:
        self._runner = runner
        self._labels = labels  # request id -> name in the report
        # keyed by request id, not label: the engine thread may run a request's first step before its submitter
        # has written the label (a step recorded under no label was lost, and the two runs' traces then differed)
        self._by_id: dict[str, Trace] = {}
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    @property
    def traces(self) -> dict[str, Trace]:
        return {self._labels[rid]: trace for rid, trace in self._by_id.items() if rid in self._labels}

    def _record(self, request: Any, logits: np.ndarray) -> None:
        trace = self._by_id.setdefault(request.id, Trace())
        logits = np.array(logits, dtype=np.float32, copy=True)
        if logits.ndim == 1:
            logits = logits[None]
        params = request.params
        if getattr(params, "guided", False):
            from model.sampling import guided_logits

            half = params.parallel_size
            decisions = guided_logits(logits[:half], logits[half:], params.cfg_weight)
        else:
            decisions = logits
        trace.logits.append(logits)
        trace.decisions.append(decisions)
        trace.tokens.append([int(t) for t in decisions.argmax(axis=-1)])

    def run(self, plan: Any) -> Any:
        failed: dict[Any, str] = {}
        started = time.perf_counter()
        logits = self._runner.forward(plan, failed)
        (self.prefill_s if plan.prefill else self.decode_s).append(time.perf_counter() - started)
        for request, values in logits.items():
            self._record(request, values)
        return self._runner.sample(plan, logits, failed)


@dataclass
class RunResult:
    device: str
    dtype: str
    weights: str  # how the weights were held: the dtype, or "bfloat16" for bf16 weights computed in float32
    traces: dict[str, Trace]
    load_s: float
    warmup_s: float
    prefill_ms: float  # median
    step_ms: float  # median decode step (both requests' rows together while both run)
    text_tokens: list[int]
    image_tokens: list[list[int]]
    setup: dict[str, str] = field(default_factory=dict)  # the kernels chosen, the KV pool and how it was sized


def kernels_chosen(device: str, dtype: str) -> str:
    """Which code computes the model on this device in this dtype."""
    if device == "gpu":
        return (f"Paddle's gpu ops in {dtype}: cuBLAS matmuls, attention as two matmuls around a float32 softmax "
                "(no fused attention), RMSNorm in float32, cuDNN convolutions and GroupNorm (float32 statistics) "
                "in the image decoder")
    from model import cpu_kernels

    if dtype == "float32" and cpu_kernels.library() is not None:
        return "the project's fused CPU kernels (model/cpu_kernels), float32 arithmetic"
    return f"Paddle's CPU ops in {dtype} (JANUS_CPU_KERNELS={cpu_kernels.mode()}: the fused kernels are not in use)"


def _photo_like(size: int, seed: int) -> Any:
    """Smooth colour gradients with noise on top: structure at several scales, unlike a flat or pure-noise image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(3 * x + 1), np.cos(2 * y), np.sin(4 * x * y + 2)], axis=-1) * 0.35 + 0.5
    pixels = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


def run_once(checkpoint: Path, device: str, dtype: str, perturb: float = 0.0, keep_bf16: bool = False,
             quantization: str = "none", *, card: DeviceMemory | None = None, fraction: float = 0.9) -> RunResult:
    """Load the checkpoint on `device` in `dtype` (keep_bf16: its bf16 weights kept as bf16, as the CPU serves them
    with JANUS_DTYPE=auto), serve the two requests together through the engine, record.

    `perturb` multiplies every weight by (1 + perturb * noise): a deliberately wrong device, for testing the check.
    `card`: size the KV pool from this card's memory as the server does on a gpu (a warm-up at the largest batch,
    then what is left of `fraction`) instead of a fixed pool.
    """
    import paddle

    from model.checkpoint.loader import load_janus
    from service.engine import Engine, EngineConfig
    from service.processing import Preprocessor

    paddle.set_device(device)
    model, report = load_janus(checkpoint, dtype, cache_dir=False, keep_bf16=keep_bf16, quantization=quantization)
    if perturb:
        rng = np.random.default_rng(1234)
        for param in model.parameters():
            if param.dtype == paddle.int8:
                continue  # int8 weights: their scales carry the values (perturbing the bytes would overflow them)
            values = param.astype("float32").numpy()
            noisy = values * (1 + perturb * rng.standard_normal(values.shape).astype(np.float32))
            param.set_value(paddle.to_tensor(noisy).astype(param.dtype))
    max_seq_len = 256
    preprocessor = Preprocessor.from_dir(checkpoint, model.cfg, max_seq_len)
    asked = preprocessor.understand("What is in this picture?", [_photo_like(model.cfg.vision.image_size, 7)],
                                    system_prompt=None, max_new_tokens=UNDERSTAND_TOKENS, temperature=0.0, top_p=1.0,
                                    seed=0, timeout_s=None)
    understand = replace(asked, stop_ids=())  # run every step even if the random model says end-of-sentence
    generate = preprocessor.generate("a lighthouse on a rock at dusk", parallel_size=GENERATE_IMAGES, cfg_weight=5.0,
                                     temperature=0.0, seed=0, timeout_s=None)
    setup, kv_blocks = {"kernels": kernels_chosen(device, dtype)}, None
    if card is not None:
        from service.engine.config import kv_block_bytes
        from service.gpu_pool import size_pool

        sizing = size_pool(model, card, fraction=fraction, block_bytes=kv_block_bytes(model, 16), block_size=16,
                           max_rows=8, max_seq_len=max_seq_len)
        kv_blocks, setup["kv pool"] = sizing.blocks, f"from the card: {sizing.describe()}"
    engine = Engine(model, EngineConfig(max_rows=8, max_seq_len=max_seq_len, max_waiting=4, kv_blocks=kv_blocks))
    setup.setdefault("kv pool", f"{engine.blocks.num_blocks} blocks "
                                f"({engine.blocks.num_blocks * engine.block_bytes / 2**20:.1f} MiB)")
    started = time.perf_counter()
    engine.start()
    engine.warmup()
    warmup_s = time.perf_counter() - started
    labels: dict[str, str] = {}
    recorder = RecordingRunner(engine.runner, labels)
    engine.runner = recorder  # type: ignore[assignment]  # the engine reads it at every step

    async def serve_both() -> tuple[Any, Any]:
        text = engine.submit(understand, stream=False)
        image = engine.submit(generate, stream=False)
        labels[text.id], labels[image.id] = "understanding", "generation"
        return await asyncio.gather(text.result(), image.result())

    try:
        text_result, image_result = asyncio.run(serve_both())
    finally:
        engine.shutdown(drain_timeout_s=0)
    weights = report.weights if quantization == "none" else f"{quantization} ({report.weights} elsewhere)"
    return RunResult(device, dtype, weights, recorder.traces, report.seconds, warmup_s,
                     1000 * statistics.median(recorder.prefill_s), 1000 * statistics.median(recorder.decode_s),
                     list(text_result.token_ids), np.asarray(image_result.tokens).tolist(), setup)


@dataclass
class Report:
    device: str
    dtype: str
    weights: str
    comparisons: list[Comparison]
    timings: dict[str, dict[str, float]]  # "device" / "reference" -> load_s, warmup_s, prefill_ms, step_ms
    dtype_reason: str = ""  # why this dtype (auto: the device's choice)
    setup: dict[str, str] = field(default_factory=dict)  # the device, its KV pool and kernels, as the server sets up
    quantization: str = "none"  # int8: the reference is the same device and dtype with unquantized weights

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def describe(self) -> str:
        held = f" (weights {self.weights})" if self.weights != self.dtype else ""
        reference = ("cpu float32" if self.quantization == "none" else
                     f"{self.device} {self.dtype} with unquantized weights")
        lines = [f"janus-serve self-test: {self.device} {self.dtype}{held} against {reference} (the reference), "
                 f"tiny random checkpoint, {UNDERSTAND_TOKENS} understanding tokens and {GENERATE_IMAGES} guided "
                 "images served together, greedy"]
        if self.dtype_reason:
            lines.append(f"  dtype: {self.dtype_reason}")
        lines += [f"  {name}: {value}" for name, value in self.setup.items()]
        lines += [f"  {c.describe()}" for c in self.comparisons]
        for name, t in self.timings.items():
            lines.append(f"  {name}: load {t['load_s']:.2f} s, warm-up {t['warmup_s']:.2f} s, prefill "
                         f"{t['prefill_ms']:.1f} ms (median), decode step {t['step_ms']:.1f} ms (median)")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "dtype_reason": self.dtype_reason,
                "weights": self.weights, "quantization": self.quantization, "passed": self.passed,
                "setup": self.setup, "timings": self.timings,
                "comparisons": [{**asdict(c), "passed": c.passed} for c in self.comparisons]}


def run_selftest(device: str, dtype: str, perturb: float = 0.0, keep_bf16: bool = False,
                 quantization: str = "none", *, card: DeviceMemory | None = None, fraction: float = 0.9) -> Report:
    """keep_bf16: the checkpoint stores bf16 and the run under test keeps it so (the CPU with JANUS_DTYPE=auto); the
    reference widens the same weights to float32. quantization "int8": the run under test holds int8 weights, the
    reference is the same device, dtype and storage unquantized. card: the run under test sizes its KV pool from
    this card's memory (the gpu's, as the server does)."""
    from model.tiny_checkpoint import build_tiny_checkpoint

    root = runtime_env.prepare_cache_dir()
    with tempfile.TemporaryDirectory(dir=root, prefix="selftest-") as folder:
        checkpoint = build_tiny_checkpoint(Path(folder) / "checkpoint", preset="tiny", seed=3,
                                           dtype="bfloat16" if keep_bf16 else "float32")
        tested = run_once(checkpoint, device, dtype, perturb, keep_bf16, quantization, card=card,
                          fraction=fraction)
        if quantization == "none":
            reference = run_once(checkpoint, "cpu", "float32")
        else:
            reference = run_once(checkpoint, device, dtype, keep_bf16=keep_bf16)
    tolerance = TOLERANCES[dtype] + (INT8_TOLERANCE if quantization == "int8" else 0.0)
    comparisons = [compare(name, reference.traces[name], tested.traces[name], tolerance)
                   for name in ("understanding", "generation")]
    timings = {f"{run.device} {run.dtype}" + (f" (weights {run.weights})" if run.weights != run.dtype else "")
               + (" (reference)" if run is reference else ""):
               {"load_s": run.load_s, "warmup_s": run.warmup_s, "prefill_ms": run.prefill_ms, "step_ms": run.step_ms}
               for run in (tested, reference)}
    return Report(device, dtype, tested.weights, comparisons, timings, setup=tested.setup,
                  quantization=quantization)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="janus-serve self-test", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="[env JANUS_DEVICE; default cpu]")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                        help="[env JANUS_DTYPE; default auto: float32 on cpu; on gpu bfloat16 from compute "
                             "capability 8.0, float16 below]")
    parser.add_argument("--quantization", choices=["none", "int8"], default=None,
                        help="[env JANUS_QUANTIZATION; default none] int8: int8 weights against the same device and "
                             "dtype with the weights unquantized")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    given = {k: v for k, v in (("device", args.device), ("dtype", args.dtype), ("quantization", args.quantization))
             if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as err:
        parser.error("; ".join(e["msg"] for e in err.errors()))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime_env.prepare_cache_dir()
    except runtime_env.CacheDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    runtime_env.keep_writes_in_cache()
    import paddle

    if settings.device == "gpu" and not paddle.is_compiled_with_cuda():
        print("error: device gpu was requested but this Paddle build has no CUDA support", file=sys.stderr)
        return 1
    from service.device import gpu_properties
    from service.gpu_pool import CudaMemory

    gpu = gpu_properties() if settings.device == "gpu" else None
    choice = settings.dtype_choice(gpu)
    report = run_selftest(settings.device, choice.dtype, keep_bf16=settings.keep_bf16_weights,
                          quantization=settings.quantization, card=CudaMemory(gpu.total_bytes) if gpu else None,
                          fraction=settings.gpu_memory_fraction)
    report.dtype_reason = choice.reason
    if gpu is not None:
        report.setup = {"card": f"{gpu.name}, compute capability {gpu.capability_text}, "
                                f"{gpu.total_bytes / 2**30:.1f} GiB", **report.setup}
    print(json.dumps(report.to_json()) if args.json else report.describe())
    return 0 if report.passed else 1
