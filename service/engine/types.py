"""What goes into the engine and what comes out of it: plain dataclasses, no pydantic, no tensors.

The API layer turns HTTP requests into `UnderstandParams` / `GenerateParams` (tokenized, images preprocessed)
and reads `Event`s back; the engine never sees HTTP and never tokenizes: an answer's text comes from an `AnswerText`
that the API side builds (it knows the tokenizer and the stop texts) and the engine feeds token by token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from service.engine.prompt_blocks import image_hash


class Kind(StrEnum):
    UNDERSTAND = "understand"
    GENERATE = "generate"


class AnswerText(Protocol):
    """One answer's text as its tokens come: the only detokenizer of the answer, and the one place that looks for its
    stop texts."""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add the next token: (the text that can be sent now, never any part of a stop text; whether the text now
        contains a stop text)."""
        ...

    def final(self, finish_reason: str) -> str:
        """The answer's whole text once it has ended (an answer ended by a stop text ends before it)."""
        ...


@dataclass(slots=True)
class UnderstandParams:
    prompt_ids: list[int]  # BOS + chat prompt, each image already expanded to its placeholder tokens
    pixel_values: np.ndarray | None  # [N, 3, S, S] float32, one per image in reading order
    max_new_tokens: int
    image_id: int = -1  # the <image_placeholder> id whose positions take the image features
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    timeout_s: float | None = None  # None: the engine's default
    n: int = 1  # answers to the one prompt: a row each, all sharing one prefill
    answer_text: Callable[[], AnswerText] | None = None  # one per answer (None: token ids only, no text)
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-probability and the k likeliest
    # content hash of each image's pixels, for the prefix and image-feature caches (computed here when not given)
    image_hashes: tuple[bytes, ...] = ()

    kind = Kind.UNDERSTAND

    def __post_init__(self) -> None:
        if not self.image_hashes and self.pixel_values is not None:
            self.image_hashes = tuple(image_hash(pixels) for pixels in self.pixel_values)

    @property
    def rows(self) -> int:
        return self.n

    @property
    def max_len(self) -> int:
        return len(self.prompt_ids) + self.max_new_tokens


@dataclass(slots=True)
class GenerateParams:
    prompt_ids: list[int]  # conditional prompt, ending with <begin_of_image>
    pad_id: int  # fills the unconditional row
    image_tokens: int  # steps to run (576 for the published models)
    parallel_size: int = 1
    cfg_weight: float = 5.0
    temperature: float = 1.0  # 0 = greedy
    seed: int = 0
    timeout_s: float | None = None  # None: the engine's default
    previews: int = 0  # partial images decoded while drawing (streamed requests), at evenly spaced steps
    speculative: bool | None = None  # verify windows of draft tokens (speculative Jacobi); None: the engine's setting

    kind = Kind.GENERATE

    @property
    def guided(self) -> bool:
        """With cfg_weight == 1 guidance returns the conditional logits: no unconditional rows are run."""
        return self.cfg_weight != 1.0

    @property
    def rows(self) -> int:
        return self.parallel_size * (2 if self.guided else 1)

    @property
    def max_len(self) -> int:
        return len(self.prompt_ids) + self.image_tokens

    @property
    def preview_steps(self) -> tuple[int, ...]:
        """Steps after which a preview is decoded: `previews` evenly spaced points strictly inside the drawing."""
        steps = (self.image_tokens * (i + 1) // (self.previews + 1) for i in range(self.previews))
        return tuple(sorted({s for s in steps if 0 < s < self.image_tokens}))


Params = UnderstandParams | GenerateParams


@dataclass(slots=True)
class Timings:
    queued_s: float = 0.0  # submit -> prefill start
    prefill_s: float = 0.0
    decode_s: float = 0.0  # first token -> last token
    total_s: float = 0.0  # submit -> result
    forward_passes: int = 0  # steps the request took part in (its prefill included)


@dataclass(slots=True)
class TokenLogprob:
    """The log-probability of a chosen token, and the likeliest tokens of the distribution it was drawn from."""

    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), likeliest first


@dataclass(slots=True)
class Answer:
    token_ids: list[int]  # new tokens, excluding the stop token (but including those that complete a stop text)
    finish_reason: str  # "stop" (a stop id or stop text came) or "length" (max_new_tokens)
    logprobs: list[TokenLogprob] | None = None  # one per token id, when asked for
    text: str = ""  # the answer's text, cut before a stop text that ended it ("" without an `answer_text`)


@dataclass(slots=True)
class UnderstandResult:
    answers: list[Answer]  # n of them, in order
    prompt_tokens: int
    timings: Timings = field(default_factory=Timings)
    cached_tokens: int = 0  # prompt positions taken from the prefix cache instead of computed

    @property
    def token_ids(self) -> list[int]:
        return self.answers[0].token_ids

    @property
    def text(self) -> str:
        return self.answers[0].text

    @property
    def finish_reason(self) -> str:
        return self.answers[0].finish_reason

    @property
    def completion_tokens(self) -> int:
        return sum(len(answer.token_ids) for answer in self.answers)


@dataclass(slots=True)
class GenerateResult:
    images: np.ndarray  # uint8 [parallel_size, S, S, 3]
    tokens: np.ndarray  # int64 [parallel_size, image_tokens]
    seed: int
    timings: Timings = field(default_factory=Timings)


Result = UnderstandResult | GenerateResult


@dataclass(slots=True)
class TokenEvent:
    """Understanding: one new token of answer `index` (the stop token is not sent)."""

    token_id: int
    index: int = 0
    logprob: TokenLogprob | None = None
    text: str = ""  # the text it lets the answer send (held back while it may still become a stop text)


@dataclass(slots=True)
class ProgressEvent:
    """Generation: image-token steps done so far (sent at most every few steps)."""

    steps_done: int
    steps_total: int


@dataclass(slots=True)
class PreviewEvent:
    """Generation: every image of the request as drawn so far; positions not yet drawn are grey."""

    steps_done: int
    steps_total: int
    images: np.ndarray  # uint8 [parallel_size, S, S, 3]


@dataclass(slots=True)
class FinishedEvent:
    result: Result


@dataclass(slots=True)
class ErrorEvent:
    error: Exception  # an EngineError


Event = TokenEvent | ProgressEvent | PreviewEvent | FinishedEvent | ErrorEvent
