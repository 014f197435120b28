"""Everything one server process holds: settings, the loaded model inside its engine, the preprocessor, metrics."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import JanusConfig
from service.api.image_budget import PixelBudget
from service.device import DeviceProperties, gpu_properties
from service.engine import Engine, EngineConfig
from service.metrics import Metrics
from service.processing import Preprocessor
from service.settings import Settings

if TYPE_CHECKING:
    from model.janus import JanusModel

log = logging.getLogger(__name__)

PLAYGROUND_FILE = "playground.json"

RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  NO MODEL DIRECTORY GIVEN: serving the built-in demo checkpoint with RANDOM WEIGHTS.\n"
    "!!  Answers are gibberish and images are noise. Set JANUS_MODEL_DIR (or --model-dir)\n"
    "!!  to a Janus-Pro checkpoint folder to serve a real model.\n" + "!" * 78
)


DEMO_BANNER = (
    "\n" + "*" * 78 + "\n"
    "**  NO MODEL DIRECTORY GIVEN: serving the built-in demo model,\n"
    "**  {description}.\n"
    "**  It draws and recognises one filled circle, square or triangle in six colours on a\n"
    "**  plain background, and nothing else. Set JANUS_MODEL_DIR (or --model-dir) to a\n"
    "**  Janus-Pro checkpoint folder to serve Janus-Pro.\n" + "*" * 78
)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    dtype: str
    weights: str  # how the weights are held: bfloat16 (on the CPU computed in float32) or the dtype
    device: str
    random_weights: bool
    description: str  # what the model is when its name does not say (the demo model); "" otherwise
    input_image_size: int  # pixels per side the understanding encoder sees
    input_image_tokens: int  # prompt positions per input image
    output_image_size: int
    output_image_tokens: int  # decoding steps per generated image
    context_length: int  # the model's own limit (positions)
    dtype_reason: str = ""  # why this dtype (auto: the device's choice)
    quantization: str = "none"  # int8: the language model's projections and the generation head held as int8

    @classmethod
    def describe(cls, cfg: JanusConfig, dtype: str, weights: str, device: str, random_weights: bool,
                 dtype_reason: str = "", quantization: str = "none") -> ModelInfo:
        return cls(cfg.name, dtype, weights, device, random_weights, cfg.description, cfg.vision.image_size,
                   cfg.vision.num_tokens,
                   cfg.gen_vision.image_size, cfg.gen_vision.num_tokens, cfg.language.max_position_embeddings,
                   dtype_reason, quantization)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    engine: Engine
    preprocessor: Preprocessor
    metrics: Metrics
    info: ModelInfo
    image_budget: PixelBudget  # pixels of uploaded images being decoded at once
    examples: dict[str, list[str]]  # suggested prompts and questions (playground.json of the checkpoint)
    kv_source: str = ""  # how the KV pool was sized, for /info

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        """Load the checkpoint and build the engine (not started: the app's lifespan starts it)."""
        import paddle

        from model.checkpoint.loader import load_janus

        if settings.device == "gpu" and not paddle.is_compiled_with_cuda():
            raise RuntimeError("device gpu was requested but this Paddle build has no CUDA support")
        paddle.set_device(settings.device)
        directory = settings.model_dir or default_model_dir()
        gpu = gpu_properties() if settings.device == "gpu" else None
        choice = settings.dtype_choice(gpu)
        dtype = choice.dtype
        log.info("dtype %s: %s", dtype, choice.reason)
        model, report = load_janus(directory, dtype, keep_bf16=settings.keep_bf16_weights,
                                   quantization=settings.quantization)
        random_weights = model.cfg.random_weights
        if settings.model_dir is None:
            log.warning(RANDOM_WEIGHTS_BANNER if random_weights else
                        DEMO_BANNER.format(description=model.cfg.description or model.cfg.name))
        elif random_weights:
            log.warning("the checkpoint in %s says its weights are random (a test checkpoint)", directory)
        kv_blocks, kv_source = kv_pool(model, settings, gpu)
        config = EngineConfig(max_rows=settings.max_rows, max_seq_len=settings.max_seq_len,
                              kv_cache_mb=settings.kv_cache_mb, kv_blocks=kv_blocks, block_size=settings.kv_block_size,
                              prefix_cache=settings.prefix_cache == "on", feature_cache_mb=settings.image_cache_mb,
                              max_waiting=settings.max_waiting, default_timeout_s=settings.request_timeout_s,
                              progress_every=settings.progress_every, decode_threads=settings.decode_threads,
                              speculative=settings.speculative == "jacobi",
                              speculative_window=settings.speculative_window,
                              speculative_positions=settings.speculative_positions)
        metrics = Metrics()
        engine = Engine(model, config, observer=metrics)
        preprocessor = Preprocessor.from_dir(directory, model.cfg, engine.max_seq_len, settings.chat_template,
                                             capacity=engine.capacity)
        info = ModelInfo.describe(model.cfg, dtype, report.weights, settings.device, random_weights, choice.reason,
                                  report.quantization)
        metrics.set_model(info.name, dtype, settings.device, random_weights)
        log.info("model %s ready to start (%s, weights %s, quantization %s, %s, %.1f s, %s; chat template %s)",
                 info.name, dtype, report.weights, report.quantization, settings.device, report.seconds, report.source,
                 preprocessor.template.name)
        return cls(settings, engine, preprocessor, metrics, info,
                   PixelBudget(settings.max_decoding_pixels, settings.max_waiting), playground_examples(directory),
                   kv_source)


def kv_pool(model: JanusModel, settings: Settings, gpu: DeviceProperties | None) -> tuple[int | None, str]:
    """The KV pool in blocks (None: JANUS_KV_CACHE_MB's worth, as the engine sizes it) and how it was sized. On the
    gpu without JANUS_KV_CACHE_MB: from the card, after a warm-up at the largest batch."""
    if not settings.kv_cache_from_card:
        given = "" if "kv_cache_mb" in settings.model_fields_set else " (the default)"
        return None, f"JANUS_KV_CACHE_MB={settings.kv_cache_mb}{given}, at most max_rows x max_seq_len"
    from service.engine.config import kv_block_bytes
    from service.gpu_pool import CudaMemory, size_pool

    assert gpu is not None
    limit = model.cfg.language.max_position_embeddings
    sizing = size_pool(model, CudaMemory(gpu.total_bytes), fraction=settings.gpu_memory_fraction,
                       block_bytes=kv_block_bytes(model, settings.kv_block_size), block_size=settings.kv_block_size,
                       max_rows=settings.max_rows, max_seq_len=min(settings.max_seq_len or limit, limit))
    log.info("KV pool from the card: %s", sizing.describe())
    return sizing.blocks, sizing.source


def default_model_dir() -> Path:
    """Without a model folder: the committed demo model; if the installation lacks it, the random-weights demo
    checkpoint (built into the cache), which says so everywhere."""
    from model.demo import demo_model_dir
    from model.tiny_checkpoint import demo_checkpoint_dir

    try:
        return demo_model_dir()
    except FileNotFoundError as err:
        log.warning("%s; falling back to random weights", err)
        return demo_checkpoint_dir()


def playground_examples(directory: Path) -> dict[str, list[str]]:
    """Suggested prompts and questions a checkpoint may ship (`playground.json`, the demo model's), for /info and
    the playground; none for published checkpoints."""
    path = directory / PLAYGROUND_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"prompts": [], "questions": []}
    return {key: [str(v) for v in raw.get(key, [])][:8] for key in ("prompts", "questions")}
