"""OpenAI's image generation request, response and stream events, and the one conversion to a native request.

The request becomes a `GenerateRequest` (`n` -> `parallel_size`; Janus's own `cfg_weight`, `temperature`, `seed`
and `speculative` pass through with the same limits as on /generate), so both routes reach the engine by one path.
What OpenAI's API can ask for and Janus-Pro cannot do (another size, transparency, a quality or style setting, image
URLs) is refused with a 400 naming the field; fields with no effect here are accepted at their neutral values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from service.api.openai.base import OpenAIModel
from service.api.openai.errors import UnsupportedParameter
from service.api.protocol import (
    MAX_PARALLEL_SIZE,
    CfgWeight,
    GenerateRequest,
    ImagePrompt,
    ImageTemperature,
    Seed,
    Speculative,
    not_blank,
)

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_PARTIAL_IMAGES = 3
# OpenAI's default compression for jpeg and webp: 100 = the highest quality the encoder offers.
DEFAULT_COMPRESSION = 100
# values that ask for nothing this server would do differently
_NEUTRAL = {
    "quality": (None, "auto", "standard"),
    "style": (None,),
    "background": (None, "auto", "opaque"),
    "moderation": (None, "auto", "low"),
}
_WHY = {
    "quality": "Janus-Pro draws at one quality; send 'auto' or leave it out",
    "style": "Janus-Pro has no style setting; describe the style in the prompt and leave style out",
    "background": "Janus-Pro draws opaque images only; send 'auto' or 'opaque', or leave it out",
    "moderation": "send 'auto' or 'low' (this server applies no moderation), or leave it out",
}


@dataclass(frozen=True, slots=True)
class Encoding:
    format: str  # png, jpeg or webp
    quality: int  # 0-100 (jpeg and webp; unused for png)


class ImageGenerationRequest(OpenAIModel):
    """OpenAI's `POST /v1/images/generations` body. Fields not listed here are accepted and ignored."""

    prompt: ImagePrompt
    model: str | None = Field(None, description="Any name: the server draws with the one model it serves "
                                                "(see GET /v1/models).")
    n: int | None = Field(None, ge=1, le=MAX_PARALLEL_SIZE,
                          description="Images to draw (default 1); `parallel_size` of POST /generate.")
    size: str | None = Field(None, examples=["384x384"],
                             description="`auto` or the served model's image size (`384x384` for Janus-Pro); "
                                         "any other size is refused.")
    response_format: str | None = Field(None, description="`b64_json` (the default); `url` is refused: images "
                                                          "come back inline only.")
    output_format: str | None = Field(None, description="`png` (default), `jpeg` or `webp`.")
    output_compression: int | None = Field(None, ge=0, le=100,
                                           description="jpeg and webp: encoder quality, 100 = best (default).")
    quality: str | None = Field(None, description="`auto` or `standard` (no effect); other values are refused.")
    style: str | None = Field(None, description="Not supported: leave it out.")
    background: str | None = Field(None, description="`auto` or `opaque` (no effect); `transparent` is refused.")
    moderation: str | None = Field(None, description="`auto` or `low`: accepted, no effect (no moderation here).")
    user: str | None = Field(None, description="Accepted, not used (echoed as `safety_identifier`).")
    safety_identifier: str | None = Field(None, description="Accepted, not used (echoed in the response).")
    stream: bool | None = Field(None, description="Answer with Server-Sent Events: `partial_images` previews per "
                                                  "image, then one `image_generation.completed` event per image.")
    partial_images: int | None = Field(None, ge=0, le=MAX_PARTIAL_IMAGES,
                                       description="With `stream`: previews of each image while it is drawn "
                                                   "(0-3, default 0), the rows not yet drawn grey.")
    # Janus-Pro's own options (the openai SDK sends them with `extra_body`)
    cfg_weight: CfgWeight = 5.0
    temperature: ImageTemperature = 1.0
    seed: Seed = None
    speculative: Speculative = None

    prompt_not_blank = field_validator("prompt")(not_blank)

    def check_supported(self, image_size: int) -> None:
        """Refuse (400, naming the field) what this server cannot do; `image_size` is the served model's."""
        supported = f"{image_size}x{image_size}"
        if self.size is not None and self.size.strip().lower() not in ("auto", supported):
            raise UnsupportedParameter("size", f"size {self.size!r} is not supported: this model draws "
                                               f"{supported} images; send size '{supported}' or 'auto'")
        if self.response_format not in (None, "b64_json"):
            raise UnsupportedParameter("response_format", f"response_format {self.response_format!r} is not "
                                                          "supported: this server returns images inline only; "
                                                          "send 'b64_json' or leave it out")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise UnsupportedParameter("output_format", f"output_format {self.output_format!r} is not supported; "
                                                        f"send one of {', '.join(OUTPUT_FORMATS)}")
        if self.encoding.format == "png" and self.output_compression not in (None, DEFAULT_COMPRESSION):
            raise UnsupportedParameter("output_compression", "output_compression applies to jpeg and webp only; "
                                                             "leave it out for png")
        for name, neutral in _NEUTRAL.items():
            value = getattr(self, name)
            if value not in neutral:
                raise UnsupportedParameter(name, f"{name} {value!r} is not supported: {_WHY[name]}")

    @property
    def encoding(self) -> Encoding:
        compression = DEFAULT_COMPRESSION if self.output_compression is None else self.output_compression
        return Encoding(self.output_format or "png", compression)

    @property
    def image_count(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def effective_safety_identifier(self) -> str | None:
        return self.safety_identifier or self.user or None

    def to_native(self) -> GenerateRequest:
        """The same request as POST /generate sees it (the native route's encoding options are not used)."""
        return GenerateRequest(prompt=self.prompt, parallel_size=self.image_count, cfg_weight=self.cfg_weight,
                               temperature=self.temperature, seed=self.seed, stream=bool(self.stream),
                               speculative=self.speculative)


# responses


class TokenDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class ImageUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens (the chat-templated prompt, as the model reads it).")
    input_tokens_details: TokenDetails
    output_tokens: int = Field(description="Image tokens drawn: n x the model's tokens per image (576 for "
                                           "Janus-Pro).")
    output_tokens_details: TokenDetails
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, image_tokens: int) -> ImageUsage:
        return cls(input_tokens=prompt_tokens,
                   input_tokens_details=TokenDetails(text_tokens=prompt_tokens, image_tokens=0),
                   output_tokens=image_tokens, output_tokens_details=TokenDetails(text_tokens=0,
                                                                                 image_tokens=image_tokens),
                   total_tokens=prompt_tokens + image_tokens)


class ImageData(BaseModel):
    b64_json: str = Field(description="Base64 of the encoded image.")


OutputFormat = Literal["png", "jpeg", "webp"]


# Janus-Pro draws at one quality: "auto" (the setting that applies) in the answer as in the stream's events.
Quality = Literal["auto"]


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time (seconds) the request was accepted.")
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: OutputFormat
    quality: Quality = Field("auto", description="Always `auto`: Janus-Pro draws at one quality (the stream's "
                                                 "events say the same).")
    size: str = Field(description="WIDTHxHEIGHT of the images.")
    usage: ImageUsage
    safety_identifier: str | None = None
    seed: int = Field(description="Janus: the sampling seed used; send it back to get the same images.")


class _ImageEvent(BaseModel):
    """What both stream events carry: one image (as drawn so far, or finished) and how it is encoded."""

    type: str
    b64_json: str
    background: Literal["opaque"] = "opaque"
    created_at: int
    output_format: OutputFormat
    quality: Quality = "auto"
    size: str
    image_index: int = Field(description="Janus: which of the request's n images (0-based).")


class PartialImageEvent(_ImageEvent):
    """Stream event `image_generation.partial_image`: one image as drawn so far."""

    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"
    partial_image_index: int = Field(description="0-based: which preview of this image.")


class CompletedEvent(_ImageEvent):
    """Stream event `image_generation.completed`: one finished image."""

    type: Literal["image_generation.completed"] = "image_generation.completed"
    usage: ImageUsage = Field(description="The whole request's usage (the same in each image's event).")
    safety_identifier: str | None = None
    seed: int = Field(description="Janus: the sampling seed used.")
