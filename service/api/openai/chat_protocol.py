"""POST /v1/chat/completions: OpenAI's request and response shapes, with the limits on the fields.

Every OpenAI field is declared, so that each is either used, accepted at its neutral value, or refused with a 400
naming it (`unsupported()`); fields OpenAI adds later pass through the tolerant base model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from service.api.openai.base import OpenAIModel
from service.api.openai.errors import UnsupportedParameter
from service.api.protocol import MAX_SEED

MAX_N = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_MESSAGES = 256
MAX_TEXT = 64_000  # characters in one message part


# messages


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ImageURL(OpenAIModel):
    url: str = Field(description="A `data:image/...;base64,` URL. The server fetches nothing: http(s) URLs are "
                                 "refused.")
    detail: Literal["auto", "low", "high"] | None = Field(None, description="Accepted and ignored: the model "
                                                                            "always sees the image at its size.")


class ImagePart(OpenAIModel):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(OpenAIModel):
    """An assistant turn's refusal text (it is part of what the assistant said)."""

    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_TEXT)


class AudioPart(OpenAIModel):
    type: Literal["input_audio"]
    input_audio: dict[str, Any] | None = None


class FilePart(OpenAIModel):
    type: Literal["file"]
    file: dict[str, Any] | None = None


# The title names a part in error messages ("a string or a list of content parts").
Part = Annotated[TextPart | ImagePart | RefusalPart | AudioPart | FilePart,
                 Field(discriminator="type", title="content part")]
Content = str | list[Part]


class Message(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = Field(None, description="A string, or a list of parts: `text`, and in user turns "
                                                      "`image_url`.")
    name: str | None = Field(None, description="Accepted and ignored.")
    refusal: str | None = Field(None, description="An earlier assistant turn's refusal; part of its text.")
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None


# request


class StreamOptions(OpenAIModel):
    include_usage: bool = Field(False, description="Send a last chunk with the usage (and `usage: null` before).")
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored.")


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(OpenAIModel):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(None, description="Any name: the server serves one model and answers with its name.")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="Most tokens per answer.")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Older name of max_completion_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; 0 = greedy.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed, same answer.")
    n: int | None = Field(None, ge=1, le=MAX_N, description="Answers to draw from the one prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 texts; an answer ends before the first one.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # accepted at their neutral value
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0.")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty.")
    response_format: ResponseFormat | None = Field(None, description="Only `{\"type\": \"text\"}`.")
    tools: list[dict[str, Any]] | None = Field(None, description="Only empty: the server calls no tools.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only `none` (or `auto` without tools).")
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(None, description="Only empty.")
    function_call: str | dict[str, Any] | None = Field(None, description="Only `none`.")
    modalities: list[str] | None = Field(None, description="Only `[\"text\"]`.")
    audio: dict[str, Any] | None = Field(None, description="Refused: the server answers with text.")
    prediction: dict[str, Any] | None = Field(None, description="Refused.")
    web_search_options: dict[str, Any] | None = Field(None, description="Refused.")
    reasoning_effort: str | None = Field(None, description="Refused: Janus-Pro does not reason in a hidden step.")
    verbosity: str | None = Field(None, description="Only `medium`.")
    store: bool | None = Field(None, description="Only false: the server keeps nothing.")
    service_tier: str | None = Field(None, description="Accepted and ignored.")
    user: str | None = Field(None, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, description="Accepted and ignored.")
    prompt_cache_key: str | None = Field(None, description="Accepted and ignored.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored.")

    def unsupported(self) -> None:
        """Refuse what the server does not do, naming the field (a 400)."""
        neutral_zero = {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty}
        for name, value in neutral_zero.items():
            if value:
                raise UnsupportedParameter(name, f"{name} is not supported; send 0 or leave it out")
        refused = {"audio": self.audio, "prediction": self.prediction, "web_search_options": self.web_search_options,
                   "reasoning_effort": self.reasoning_effort, "logit_bias": self.logit_bias or None,
                   "tools": self.tools or None, "functions": self.functions or None}
        for name, value in refused.items():
            if value is not None:
                raise UnsupportedParameter(name, f"{name} is not supported by this server; leave it out")
        for name in ("tool_choice", "function_call"):
            choice = getattr(self, name)
            if choice not in (None, "none", "auto"):
                asked = repr(choice) if isinstance(choice, str) else "naming a function"
                raise UnsupportedParameter(name, f"{name} {asked} needs tools; this server calls no tools: send "
                                                 "'none' or 'auto', or leave it out")
        if self.response_format is not None and self.response_format.type != "text":
            raise UnsupportedParameter("response_format", f"response_format {self.response_format.type!r} is not "
                                                          "supported; only {\"type\": \"text\"}")
        if self.modalities is not None and set(self.modalities) != {"text"}:
            raise UnsupportedParameter("modalities", "only the text modality is supported: [\"text\"]")
        if self.verbosity not in (None, "medium"):
            raise UnsupportedParameter("verbosity", "verbosity is not supported; send 'medium' or leave it out")
        if self.store:
            raise UnsupportedParameter("store", "store is not supported (the server keeps nothing); send false")
        if self.top_logprobs is not None and not self.logprobs:
            raise UnsupportedParameter("top_logprobs", "top_logprobs needs logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise UnsupportedParameter("stream_options", "stream_options needs stream: true")

    @property
    def stop_texts(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise UnsupportedParameter("stop", f"at most {MAX_STOP} stop texts, got {len(stops)}")
        if any(not s for s in stops):
            raise UnsupportedParameter("stop", "a stop text must not be empty")
        if any(len(s) > 256 for s in stops):
            raise UnsupportedParameter("stop", "a stop text is at most 256 characters")
        return tuple(stops)


# response (answers are built by the server: plain models)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens whose keys and values came from the server's prefix cache "
                                           "(an earlier request with the same beginning) instead of being computed.")


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: CompletionUsage


class Delta(BaseModel):
    """What a chunk adds to an answer; fields it does not add are left out."""

    role: Literal["assistant"] | None = Field(None, exclude_if=lambda value: value is None)
    content: str | None = Field(None, exclude_if=lambda value: value is None)


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
