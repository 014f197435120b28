"""HTTP request and response models. Limits live on the fields; `to_params()` and friends turn them into what the
preprocessor and the engine take (plain dataclasses: the engine never sees pydantic)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.special_tokens import IMAGE_TOKEN
from service.conversation import Conversation
from service.engine.types import GenerateParams, Timings
from service.processing import MAX_IMAGES, AnswerOptions, Preprocessor, check_image_tags, question_conversation

MAX_SEED = 2**32 - 1
MAX_HISTORY = 64
MAX_PARALLEL_SIZE = 16
MAX_PREVIEWS = 3
DEFAULT_JPEG_QUALITY = 90


class _Request(BaseModel):
    # A misspelt option (max_tokens, n) must not be silently ignored; NaN and Infinity are no numbers to sample with.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


class UnderstandOptions(_Request):
    """Everything of an understanding request except the images (the multipart form's text fields)."""

    question: str = Field(min_length=1, max_length=16_000, examples=["What is shown in this picture?"],
                          description="The question. With several images, place each with an "
                                      "`<image_placeholder>` tag (in this question or an earlier one of `history`); "
                                      "one image may go without (it comes first). No image: a text-only question.")
    system_prompt: str | None = Field(None, max_length=16_000,
                                      description="Replaces the default system prompt; an empty string means none. "
                                                  "Plain text: images are placed only in the question.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096,
                                       description="Most tokens to generate; default: 256 or what still fits the "
                                                   "server's context after the prompt, whichever is less.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="Sampling seed; the server picks one (and returns it) when absent.")
    stream: bool = Field(False, description="Answer with Server-Sent Events: text deltas, then a final event. "
                                            "Kept for existing clients: `POST /understand/stream` is the operation "
                                            "documented as a stream (there this field changes nothing).")

    question_not_blank = field_validator("question")(not_blank)

    @field_validator("system_prompt")
    @classmethod
    def _no_image_tag(cls, value: str | None) -> str | None:
        if value is not None and IMAGE_TOKEN in value:
            raise ValueError(f"must not contain {IMAGE_TOKEN}: images are placed only in the question")
        return value

    def conversation(self, num_images: int) -> Conversation:
        """The question (and history) with its images placed, as the preprocessor reads it."""
        return question_conversation(self.question, num_images, self.system_prompt, self.turns())

    def answer_options(self, seed: int) -> AnswerOptions:
        return AnswerOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                             seed=seed)

    def turns(self) -> list[tuple[str, str]]:
        """Earlier (question, answer) turns; the multipart form has none."""
        return []


class HistoryTurn(_Request):
    question: str = Field(min_length=1, max_length=16_000,
                          description="An earlier question; `<image_placeholder>` tags place images here too.")
    answer: str = Field(max_length=16_000, description="The model's answer to it (plain text).")

    question_not_blank = field_validator("question")(not_blank)


class UnderstandRequest(UnderstandOptions):
    """JSON form of an understanding request: images as base64 strings."""

    images: list[str] = Field([], max_length=MAX_IMAGES, examples=[["iVBORw0KGgoAAAANSUhEUgAA..."]],
                              description="Base64 images (JPEG, PNG, WebP, GIF, BMP, TIFF) or "
                                          "`data:image/...;base64,` URLs, in the order their tags stand. The "
                                          "server never fetches URLs. None: a text-only conversation. "
                                          f"At most {MAX_IMAGES}, and only as many as fit the server's context "
                                          "and KV cache: each image takes 578 positions (Janus-Pro; the "
                                          "defaults hold eight); GET /info says how many (`limits.max_images`).")
    history: list[HistoryTurn] = Field([], max_length=MAX_HISTORY,
                                       description="Earlier turns of the conversation, oldest first (JSON only).")

    @model_validator(mode="after")
    def _tags_match_images(self) -> UnderstandRequest:
        check_image_tags(self.question, len(self.images), self.turns())
        return self

    def turns(self) -> list[tuple[str, str]]:
        return [(turn.question, turn.answer) for turn in self.history]


# Generation options shared by /generate and /v1/images/generations (one set of limits for both).
ImagePrompt = Annotated[str, Field(min_length=1, max_length=4000, examples=["a red fox in the snow, watercolour"],
                                   description="What to draw.")]
CfgWeight = Annotated[float, Field(ge=1.0, le=20.0,
                                   description="Classifier-free guidance strength; 1 = no guidance (half the work).")]
ImageTemperature = Annotated[float, Field(ge=0.0, le=2.0, description="Image-token sampling temperature; 0 = greedy.")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED,
                                   description="Sampling seed; the server picks one (and returns it) when absent.")]
Speculative = Annotated[bool | None, Field(
    description="Speculative Jacobi decoding: each step verifies a window of draft image tokens and keeps those the "
                "sampling distribution accepts (fewer steps, the same distribution; a seed's images differ from "
                "those drawn without it). Absent: the server's setting (JANUS_SPECULATIVE).")]


class GenerateRequest(_Request):
    prompt: ImagePrompt
    parallel_size: int = Field(1, ge=1, le=MAX_PARALLEL_SIZE, description="Images to generate from the prompt.")
    cfg_weight: CfgWeight = 5.0
    temperature: ImageTemperature = 1.0
    seed: Seed = None
    format: Literal["jpeg", "png"] = Field("jpeg", description="Encoding of the returned images.")
    # None rather than 90 as the default: generated clients send documented defaults, and 90 would then clash
    # with format png.
    jpeg_quality: int | None = Field(None, ge=1, le=100,
                                     description=f"JPEG quality (format jpeg only); default {DEFAULT_JPEG_QUALITY}.")
    stream: bool = Field(False, description="Answer with Server-Sent Events: progress, then the images. Kept for "
                                            "existing clients: `POST /generate/stream` is the operation documented "
                                            "as a stream (there this field changes nothing).")
    previews: int = Field(0, ge=0, le=MAX_PREVIEWS,
                          description="Streams only: `preview` events with the images as drawn so far (positions "
                                      "not yet drawn grey), at this many evenly spaced points of the drawing. "
                                      "Each preview is a decode of every image, done while the drawing goes on; "
                                      "one the drawing outpaces is skipped. Ignored without a stream.")
    speculative: Speculative = None

    prompt_not_blank = field_validator("prompt")(not_blank)

    @model_validator(mode="after")
    def _quality_needs_jpeg(self) -> GenerateRequest:
        if self.format != "jpeg" and self.jpeg_quality is not None:
            raise ValueError("jpeg_quality applies only to format jpeg")
        return self

    def to_params(self, prep: Preprocessor, seed: int, timeout_s: float | None, count_field: str = "parallel_size",
                  previews: int = 0) -> GenerateParams:
        """`count_field`: what the client's API calls parallel_size (`n` on /v1/images/generations); `previews`:
        partial images to decode while drawing (streamed requests only)."""
        params = prep.generate(self.prompt, parallel_size=self.parallel_size, cfg_weight=self.cfg_weight,
                               temperature=self.temperature, seed=seed, timeout_s=timeout_s, count_field=count_field,
                               previews=previews)
        params.speculative = self.speculative
        return params


# responses


class RequestTimings(BaseModel):
    queued_s: float = Field(description="Submission to start of processing.")
    prefill_s: float = Field(description="Prompt (and image) processing.")
    decode_s: float = Field(description="First to last new token.")
    total_s: float = Field(description="Submission to result.")

    @classmethod
    def of(cls, timings: Timings) -> RequestTimings:
        return cls(queued_s=round(timings.queued_s, 6), prefill_s=round(timings.prefill_s, 6),
                   decode_s=round(timings.decode_s, 6), total_s=round(timings.total_s, 6))


class GenerateTimings(RequestTimings):
    forward_passes: int = Field(description="Forwards of the model the images took, their prompt's included: one "
                                            "per image token plainly, fewer with speculative decoding.")

    @classmethod
    def of(cls, timings: Timings) -> GenerateTimings:
        return cls(**RequestTimings.of(timings).model_dump(), forward_passes=timings.forward_passes)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class UnderstandResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length"] = Field(description="stop: the model ended its answer; "
                                                                 "length: max_new_tokens was reached.")
    usage: Usage
    seed: int
    timings: RequestTimings
    random_weights: bool = Field(description="True when the server runs a model with random weights (a demo).")


class TextDelta(BaseModel):
    """Stream event `delta`: the next piece of the answer."""

    id: str
    text: str


class GeneratedImage(BaseModel):
    index: int
    data: str = Field(description="Base64 of the encoded image.")


class GenerateResponse(BaseModel):
    id: str
    model: str
    images: list[GeneratedImage]
    format: Literal["jpeg", "png"]
    media_type: str
    width: int
    height: int
    seed: int
    timings: GenerateTimings
    random_weights: bool = Field(description="True when the server runs a model with random weights (a demo).")


class Progress(BaseModel):
    """Stream event `progress`: image-token steps done (every image of the request advances together)."""

    id: str
    steps_done: int
    steps_total: int


class Decoding(BaseModel):
    """Stream event `decoding`: every image token is drawn and the images are being decoded (`done` follows)."""

    id: str
    images: int = Field(description="Images being decoded.")


class Preview(BaseModel):
    """Stream event `preview` (asked for with `previews`): every image of the request as drawn so far, positions
    not yet drawn grey, encoded as the request's `format`."""

    id: str
    steps_done: int
    steps_total: int
    format: Literal["jpeg", "png"]
    media_type: str
    images: list[GeneratedImage]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    random_weights: bool


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    random_weights: bool


class ImageSpec(BaseModel):
    image_size: int = Field(description="Pixels per side.")
    image_tokens: int = Field(description="Sequence positions per image.")


class Limits(BaseModel):
    max_rows: int
    max_seq_len: int = Field(description="Longest request: prompt (images included) + answer or image tokens.")
    max_waiting: int
    request_timeout_s: float
    max_body_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_images: int = Field(description="Images one understanding request can carry here: as many as fit "
                                        "max_seq_len and the KV cache with the default system prompt, a short "
                                        "question and answer.")
    max_parallel_size: int = Field(description="Images one generation request can ask for here with guidance "
                                               "(two rows each; twice as many with cfg_weight 1, up to 16).")


class KVCacheInfo(BaseModel):
    mib: float = Field(description="The KV pool's memory in MiB.")
    blocks: int
    block_size: int = Field(description="Positions per block.")
    positions: int = Field(description="Positions the pool holds across all requests (blocks x block_size).")
    source: str = Field(description="How it was sized: JANUS_KV_CACHE_MB, or on a gpu what was left of "
                                    "JANUS_GPU_MEMORY_FRACTION of the card after the weights and a warm-up at the "
                                    "largest batch.")
    images_per_question: int = Field(description="Images one question can carry with this pool and context (as "
                                                 "limits.max_images).")
    generation_rows: int = Field(description="Guided generation rows the pool holds at once (two per image), "
                                             "within max_rows.")


class Examples(BaseModel):
    prompts: list[str] = Field(description="Generation prompts.")
    questions: list[str] = Field(description="Questions about a picture.")


class InfoResponse(BaseModel):
    model: str
    dtype: str = Field(description="The arithmetic's dtype.")
    dtype_reason: str = Field("", description="Why this dtype: with JANUS_DTYPE=auto, the device's choice (on a gpu "
                                              "bfloat16 from compute capability 8.0, float16 below).")
    weights: str = Field(description="How the weights are held: bfloat16 (on the cpu, a bf16 checkpoint with dtype "
                                     "auto: computed in float32 from bf16, half the memory) or the dtype.")
    quantization: Literal["none", "int8"] = Field(
        "none", description="int8 (JANUS_QUANTIZATION): the language model's projections and the generation head "
                            "are held as int8 with float32 scales, the other weights as `weights` says.")
    device: str
    random_weights: bool
    description: str = Field(description="What the model is when its name does not say, e.g. for the built-in "
                                         "demo: \"a small demo model trained on synthetic shapes, not Janus-Pro\"; "
                                         "empty otherwise.")
    examples: Examples = Field(description="Prompts and questions the model answers well (the demo model's), for "
                                           "clients that suggest some; empty lists for published checkpoints.")
    context_length: int = Field(description="The model's own position limit.")
    understanding: ImageSpec
    generation: ImageSpec
    limits: Limits
    kv_cache: KVCacheInfo


class ErrorDetail(BaseModel):
    loc: str = Field(description="Where the problem is, e.g. body.max_new_tokens.")
    message: str


class ErrorBody(BaseModel):
    type: str = Field(description="Stable machine-readable kind, e.g. validation_error, overloaded.")
    message: str
    status: int
    details: list[ErrorDetail] | None = Field(None, description="Per-field problems (validation errors only).")


class ErrorResponse(BaseModel):
    error: ErrorBody
