"""Service configuration: environment variables with the `JANUS_` prefix, overridable by `janus-serve` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.device import DeviceProperties, DtypeChoice, choose_dtype

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JANUS_", extra="ignore", frozen=True)

    # model
    model_dir: Path | None = Field(
        None, description="Local checkpoint folder. Unset: the embedded demo checkpoint with RANDOM weights.")
    device: Literal["cpu", "gpu"] = Field("cpu", description="Where the model runs.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype; auto on gpu = bfloat16 at compute capability 8.0 and up, float16 below "
                            "(V100, T4); on cpu float32 arithmetic, with a bf16 checkpoint's projection and "
                            "embedding weights kept bf16 (half the memory); float32 on cpu widens every weight.")
    quantization: Literal["none", "int8"] = Field(
        "none", description="int8: the language model's projections and the generation head held as int8 with a "
                            "float32 scale per output channel and group of weight rows (about half the memory of "
                            "bf16, faster decoding on the cpu); embeddings, norms, the vision encoder and the image "
                            "decoder stay as they are. Quantized at the first start and kept in the converted cache.")
    chat_template: Literal["deepseek", "legacy"] | None = Field(
        None, description="Prompt roles; unset: read from the checkpoint (Janus-Pro: deepseek, Janus-1.3B: legacy).")

    # server
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    api_key: SecretStr | None = Field(
        None, description="When set, every route but /health and /ready needs it (Bearer or X-API-Key).")
    playground: Literal["on", "off"] = Field(
        "on", description="The playground page at /playground/ (and / leading to it); off: both answer 404.")

    # engine capacity
    max_rows: int = Field(32, ge=1, description="Sequences decoding at once (generation uses 2 per image, 1 with "
                                                "cfg_weight 1).")
    max_seq_len: int | None = Field(None, ge=16, description="Longest request: prompt + new tokens (or image "
                                                             "tokens); unset: the model's context.")
    kv_cache_mb: int = Field(8192, ge=1, description="KV cache budget in MiB: one pool of blocks shared by all "
                                                     "requests (never more than max_rows x max_seq_len need). On "
                                                     "gpu only when set: otherwise sized from the card "
                                                     "(JANUS_GPU_MEMORY_FRACTION).")
    gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="gpu: the share of the card the server may use; after the weights are loaded and "
                                     "a warm-up at the largest batch has run, the KV pool takes what is left of it "
                                     "(unless JANUS_KV_CACHE_MB is set).")
    kv_block_size: int = Field(16, ge=1, le=1024, description="Positions per KV cache block.")
    prefix_cache: Literal["on", "off"] = Field(
        "on", description="Reuse the KV blocks of known prompt prefixes (system prompt, earlier turns, the same "
                          "image) across requests; finished requests' blocks stay cached until memory is needed.")
    image_cache_mb: int = Field(256, ge=0, description="Vision features of recent images kept in MiB, so a "
                                                       "repeated image skips the vision encoder (0: off).")
    max_waiting: int = Field(64, ge=0, description="Requests queued beyond the running ones; past that: 429.")
    progress_every: int = Field(16, ge=1, description="Generation progress events every this many steps.")
    speculative: Literal["off", "jacobi"] = Field(
        "off", description="Generation: jacobi verifies a window of draft image tokens per image in each step "
                           "(speculative Jacobi decoding: fewer steps, the same distribution); requests may say "
                           "otherwise (`speculative`).")
    speculative_window: int = Field(8, ge=1, le=64, description="Draft image tokens per image and step with "
                                                                "speculative decoding.")
    speculative_positions: int = Field(
        48, ge=0, description="Positions a speculative request's rows may feed in one step: a request of many "
                              "images gets a smaller window, none when even one draft each would not fit (0: no "
                              "limit).")
    decode_threads: int = Field(0, ge=0, description="CPU: threads of the image decoder while requests run beside it "
                                                     "(with none running it takes all of OMP_NUM_THREADS); 0 = half "
                                                     "of OMP_NUM_THREADS, at least 1.")

    # time
    request_timeout_s: float = Field(600.0, gt=0, description="Per-request limit from submission to result (504).")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM: time given to in-flight requests.")
    body_timeout_s: float = Field(60.0, gt=0, description="Time a client has to send its whole request body, from "
                                                          "its headers on; slower: 408 and the connection closes.")

    # input limits
    max_body_bytes: int = Field(64 * MiB, ge=1024, description="Largest request body (413).")
    max_image_bytes: int = Field(16 * MiB, ge=1024, description="Largest encoded image (413).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image, width x height (413).")
    max_decoding_pixels: int = Field(
        120_000_000, ge=1, description="Pixels of uploaded images being decoded at once, across requests (about 4 "
                                       "bytes each); past it requests wait their turn (429 past max_waiting of "
                                       "them). A larger image decodes alone.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.device == "cpu" and self.dtype in ("bfloat16", "float16"):
            # Paddle's CPU build lacks half-precision kernels for most ops: fail at start, not on the first request.
            raise ValueError(f"dtype {self.dtype} is not supported on cpu; use auto (bf16 checkpoints keep bf16 "
                             "weights, computed in float32) or float32")
        if self.device == "gpu" and self.quantization == "int8" and self.dtype == "float32":
            raise ValueError("quantization int8 on the gpu runs Paddle's weight-only kernels, which take float16 or "
                             "bfloat16 activations: use dtype auto, bfloat16 or float16")
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise ValueError(f"model_dir {self.model_dir} is not a directory")
        return self

    @property
    def compute_dtype(self) -> str:
        """The dtype where it does not depend on the card (see `dtype_choice` for the gpu with auto)."""
        if self.dtype != "auto":
            return self.dtype
        if self.device == "gpu":
            raise ValueError("dtype auto on the gpu depends on the card: use dtype_choice(gpu properties)")
        return "float32"

    def dtype_choice(self, gpu: DeviceProperties | None = None) -> DtypeChoice:
        """The compute dtype and why (the gpu's properties are needed on the gpu)."""
        return choose_dtype(self.dtype, self.device, gpu)

    @property
    def kv_cache_from_card(self) -> bool:
        """gpu without an explicit JANUS_KV_CACHE_MB: the pool is sized from the card's memory."""
        return self.device == "gpu" and "kv_cache_mb" not in self.model_fields_set

    @property
    def keep_bf16_weights(self) -> bool:
        """CPU with dtype auto: a bf16 checkpoint's weights stay bf16 where the CPU kernels compute from them."""
        return self.device == "cpu" and self.dtype == "auto"

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None
