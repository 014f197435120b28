"""`janus-serve plan`: will this model with these settings fit this card? From config.json alone, no weights loaded.

Prints the memory for the weights, the activations of the largest step, the image decoder and the KV pool, and
what the pool holds (positions, images per question, generation rows at once, parallel_size). The settings are the
server's (flags or JANUS_* variables); the exit status is 0 when it fits, 1 when it does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model.config import JanusConfig
from service.device import DeviceProperties, choose_dtype, parse_bytes
from service.memory_plan import GiB, MemoryPlan, parameter_count, plan
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janus-serve plan", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="checkpoint folder (its config.json is read)")
    parser.add_argument("--device-memory", default=None,
                        help="the card's memory, e.g. 16GiB, 24GB, 80GiB [default: the gpu's, when there is one]")
    parser.add_argument("--compute-capability", default=None, metavar="MAJOR.MINOR",
                        help="the card's compute capability, for dtype auto (e.g. 7.0 for a V100) [default: the "
                             "gpu's; without one auto counts 2 bytes, bfloat16 and float16 alike]")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                        help="[env JANUS_DTYPE; default auto]")
    parser.add_argument("--quantization", choices=["none", "int8"], default=None,
                        help="int8: the language model's Linear weights and the generation head as one byte each "
                             "plus a float32 scale per 64 input columns [env JANUS_QUANTIZATION; default none]")
    for name in ("max_rows", "max_seq_len", "kv_block_size", "kv_cache_mb", "gpu_memory_fraction"):
        field = Settings.model_fields[name]
        env = f"JANUS_{name.upper()}"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=env,
                            type=float if name == "gpu_memory_fraction" else int,
                            help=f"as the server's flag [env {env}; default {field.default or 'unset'}]")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    return parser


def _card(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[int, tuple[int, int] | None, str]:
    """(memory in bytes, compute capability or None, name) from the flags, else from the gpu here."""
    gpu: DeviceProperties | None = None
    if args.device_memory is None or args.compute_capability is None:
        gpu = _local_gpu()
    try:
        memory = parse_bytes(args.device_memory) if args.device_memory else None
    except ValueError as err:
        parser.error(f"--device-memory: {err}")
    if memory is None:
        if gpu is None:
            parser.error("--device-memory is needed without a gpu here, e.g. --device-memory 16GiB")
        memory = gpu.total_bytes
    capability = gpu.capability if gpu is not None else None
    if args.compute_capability is not None:
        try:
            major, minor = (int(part) for part in args.compute_capability.split("."))
        except ValueError:
            parser.error(f"--compute-capability {args.compute_capability!r}: write MAJOR.MINOR, e.g. 7.0 or 8.6")
        capability = (major, minor)
    return memory, capability, gpu.name if gpu is not None and args.device_memory is None else "the card"


def _local_gpu() -> DeviceProperties | None:
    try:
        import paddle

        if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
            return None
        from service.device import gpu_properties

        return gpu_properties()
    except Exception:  # noqa: BLE001 - no usable gpu: the flags must say
        return None


def _gib(n: int) -> str:
    return f"{n / GiB:6.2f} GiB"


def describe(result: MemoryPlan, cfg: JanusConfig, dtype_note: str, card: str) -> str:
    share = result.device_bytes * result.fraction
    c = result.contents
    lines = [f"janus-serve plan: {cfg.name} ({parameter_count(cfg) / 1e9:.2f} B parameters) on {card} of "
             f"{result.device_bytes / GiB:.1f} GiB, {dtype_note}, quantization {result.quantization}, max_rows "
             f"{result.max_rows}, max_seq_len {result.max_seq_len}",
             f"  weights        {_gib(result.weights)}",
             f"  rotary tables  {_gib(result.tables)}  (float32)",
             f"  activations    {_gib(result.activations)}  (largest step: {result.max_rows} rows decoding at "
             f"{result.max_seq_len} positions, or a prompt of {result.max_seq_len}; estimate)",
             f"  image decoder  {_gib(result.decoder)}  ({result.decoder_images} images at once; estimate)",
             f"  KV pool        {_gib(result.pool)}  ({result.pool_source}; {result.block_bytes // 1024} KiB per "
             "block)",
             f"  total          {_gib(result.in_use + result.pool)}  of {share / GiB:.2f} GiB ({result.fraction:g} x "
             "the card)"]
    if result.fits:
        lines.append(f"fits: {c.positions} positions in the KV pool; {c.images_per_question} image(s) per "
                     f"question; {c.generation_rows} generation rows at once; parallel_size up to "
                     f"{c.parallel_size}")
    elif result.in_use > share:
        lines.append(f"does not fit: weights, tables, activations and the decoder need {result.in_use / GiB:.2f} "
                     f"GiB of the {share / GiB:.2f} GiB share. Lower --max-seq-len (the activations grow with it, "
                     "the prompt's quadratically) or --max-rows, or use --quantization int8")
    else:
        lines.append(f"does not fit: the KV pool of {result.pool / GiB:.2f} GiB does not fit beside the rest; "
                     "lower --kv-cache-mb or leave it unset")
    return "\n".join(lines)


def to_json(result: MemoryPlan) -> dict[str, Any]:
    c = result.contents
    return {"dtype": result.dtype, "quantization": result.quantization, "device_bytes": result.device_bytes,
            "fraction": result.fraction, "weights_bytes": result.weights, "table_bytes": result.tables,
            "activation_bytes": result.activations,
            "decoder_bytes": result.decoder, "decoder_images": result.decoder_images,
            "kv_pool_bytes": result.pool, "kv_block_bytes": result.block_bytes, "kv_pool_source": result.pool_source,
            "fits": result.fits, "max_rows": result.max_rows, "max_seq_len": result.max_seq_len,
            "kv_blocks": c.blocks, "positions": c.positions, "images_per_question": c.images_per_question,
            "generation_rows": c.generation_rows, "parallel_size": c.parallel_size}


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = ("dtype", "quantization", "max_rows", "max_seq_len", "kv_block_size", "kv_cache_mb", "gpu_memory_fraction")
    given = {k: v for k in names if (v := getattr(args, k)) is not None}
    try:
        settings = Settings(device="gpu", **given)
        cfg = JanusConfig.from_file(args.model_dir / "config.json")
    except ValidationError as err:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    except (OSError, ValueError) as err:
        parser.error(str(err))
    memory, capability, card = _card(args, parser)
    if capability is not None:
        choice = choose_dtype(settings.dtype, "gpu", DeviceProperties(card, capability, memory))
        dtype, note = choice.dtype, choice.dtype + (" (auto)" if settings.dtype == "auto" else "")
    elif settings.dtype == "auto":
        dtype, note = "bfloat16", "auto (2 bytes: bfloat16 from compute capability 8.0, float16 below)"
    else:
        dtype, note = settings.dtype, settings.dtype
    explicit = "kv_cache_mb" in settings.model_fields_set
    result = plan(cfg, memory, dtype, settings.quantization, fraction=settings.gpu_memory_fraction,
                  max_rows=settings.max_rows, max_seq_len=settings.max_seq_len, block_size=settings.kv_block_size,
                  kv_cache_mb=settings.kv_cache_mb if explicit else None)
    print(json.dumps(to_json(result)) if args.json else describe(result, cfg, note, card))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
