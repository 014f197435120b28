"""GET /info: which model is served, on what, and the limits requests must respect."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import docs
from service.api.auth import Authenticated
from service.api.deps import RuntimeDep
from service.api.protocol import MAX_PARALLEL_SIZE, Examples, ImageSpec, InfoResponse, KVCacheInfo, Limits
from service.runtime import Runtime

MiB = 2**20

router = APIRouter(tags=["operations"], dependencies=[Authenticated])

EXAMPLE = {
    "model": "Janus-Pro-1B", "dtype": "float32",
    "dtype_reason": "auto on the cpu: float32 arithmetic (Paddle's CPU build has no half-precision kernels; a bf16 "
                    "checkpoint's weights stay bf16)", "weights": "bfloat16", "quantization": "none", "device": "cpu",
    "random_weights": False,
    "description": "", "examples": {"prompts": [], "questions": []}, "context_length": 16384,
    "understanding": {"image_size": 384, "image_tokens": 576}, "generation": {"image_size": 384, "image_tokens": 576},
    "limits": {"max_rows": 32, "max_seq_len": 16384, "max_waiting": 64, "request_timeout_s": 600.0,
               "max_body_bytes": 67108864, "max_image_bytes": 16777216, "max_image_pixels": 40000000,
               "max_images": 8, "max_parallel_size": 16},
    "kv_cache": {"mib": 8192.0, "blocks": 10922, "block_size": 16, "positions": 174752,
                 "source": "JANUS_KV_CACHE_MB=8192 (the default), at most max_rows x max_seq_len",
                 "images_per_question": 8, "generation_rows": 32},
}


@router.get(
    "/info",
    operation_id="get_model_info",
    summary="Model and limits",
    description="The served model (name, dtype, how its weights are held, device), whether its weights are random "
                "(a test checkpoint), what it is when its name does not say (the built-in demo model) with prompts "
                "and questions it answers well, the image sizes in and out, the server's limits, and its KV pool "
                "(its size, how it was sized and what it holds).",
    response_model=InfoResponse,
    responses={200: {"content": {"application/json": {"example": EXAMPLE}}}, **docs.error_responses(401)},
)
async def get_model_info(runtime: RuntimeDep) -> InfoResponse:
    info, settings = runtime.info, runtime.settings
    return InfoResponse(
        model=info.name, dtype=info.dtype, dtype_reason=info.dtype_reason, weights=info.weights,
        quantization=info.quantization, device=info.device, random_weights=info.random_weights,
        description=info.description, examples=Examples(**runtime.examples), context_length=info.context_length,
        understanding=ImageSpec(image_size=info.input_image_size, image_tokens=info.input_image_tokens),
        generation=ImageSpec(image_size=info.output_image_size, image_tokens=info.output_image_tokens),
        limits=Limits(max_rows=settings.max_rows, max_seq_len=runtime.engine.max_seq_len,
                      max_waiting=settings.max_waiting, request_timeout_s=settings.request_timeout_s,
                      max_body_bytes=settings.max_body_bytes, max_image_bytes=settings.max_image_bytes,
                      max_image_pixels=settings.max_image_pixels,
                      max_images=runtime.preprocessor.max_images(),
                      max_parallel_size=runtime.preprocessor.max_parallel_size(MAX_PARALLEL_SIZE)),
        kv_cache=kv_cache_info(runtime))


def kv_cache_info(runtime: Runtime) -> KVCacheInfo:
    engine, preprocessor = runtime.engine, runtime.preprocessor
    blocks, block_size = engine.blocks.num_blocks, engine.config.block_size
    return KVCacheInfo(mib=round(blocks * engine.block_bytes / MiB, 1), blocks=blocks, block_size=block_size,
                       positions=blocks * block_size, source=runtime.kv_source,
                       images_per_question=preprocessor.max_images(),
                       generation_rows=2 * preprocessor.max_parallel_size(runtime.settings.max_rows // 2))
