"""From a conversation and its images (or a prompt) to the engine's parameters: chat template, token ids, pixel
values. Both the native and the OpenAI-compatible routes come through here.

Knows nothing of HTTP: the API layer decodes uploads into PIL images and calls this; errors are `InputError`
with a message meant for the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from model.chat_template import (
    DEFAULT_SYSTEM_PROMPT,
    IMAGE,
    ChatTemplate,
    conversation_prompt,
    count_image_tags,
    expand_image_ids,
    generation_prompt,
    get_template,
    place_images,
    template_for_checkpoint,
)
from model.config import JanusConfig
from model.image_processing import ImageProcessor
from model.special_tokens import IMAGE_TOKEN
from model.token_bytes import token_bytes
from model.tokenizer import JanusTokenizer
from service.answer_text import AnswerDetokenizer
from service.conversation import Conversation, Turn
from service.engine.capacity import Capacity, Refusal, answer_refusal, image_refusal
from service.engine.types import GenerateParams, UnderstandParams

DEFAULT_MAX_NEW_TOKENS = 256
MAX_IMAGES = 8  # per understanding request whatever the context: each image is a full vision-encoder pass
# What an understanding request must leave room for to count as servable (`max_images`): a short answer.
MIN_ANSWER_TOKENS = 16


class InputError(ValueError):
    """The request's content cannot be turned into a model input (the client's mistake)."""


class DoesNotFit(InputError):
    """The request is larger than this server's settings allow; the message names the setting to raise."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.shortfall = refusal.shortfall
        self.param = refusal.param  # the request field to change, in the client's own terms


def check_image_tags(question: str, num_images: int, history: Sequence[tuple[str, str]] = ()) -> None:
    """Images are placed by `<image_placeholder>` tags in the questions (the last one or earlier ones); a single
    image may go without one (it then comes first in the last question: the reference layout)."""
    tags = count_image_tags(question) + sum(count_image_tags(user) for user, _ in history)
    if tags == 0 and num_images > 1:
        raise InputError(f"{num_images} images were given: place each with an {IMAGE_TOKEN} tag in the question")
    if tags and tags != num_images:
        raise InputError(f"the questions have {tags} {IMAGE_TOKEN} tag(s) but {num_images} image(s) were given")


def question_conversation(question: str, num_images: int, system_prompt: str | None = None,
                          history: Sequence[tuple[str, str]] = ()) -> Conversation:
    """The native request as a conversation: earlier (question, answer) turns, then the question. Tags in the
    questions place the images (answers are plain text); a single untagged image goes before the last question."""
    check_image_tags(question, num_images, history)
    turns: list[Turn] = []
    for user, assistant in history:
        turns += [Turn("user", place_images(user)), Turn("assistant", (assistant,))]
    last = place_images(question)
    if num_images and count_image_tags(question) + sum(count_image_tags(user) for user, _ in history) == 0:
        last = (IMAGE, "\n") + last
    return Conversation((*turns, Turn("user", last)), system_prompt)


@dataclass(frozen=True, slots=True)
class AnswerOptions:
    max_new_tokens: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS or what fits the context
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    n: int = 1  # answers drawn from the one prompt
    stop: tuple[str, ...] = ()  # an answer ends before the first of these texts
    logprobs: int | None = None  # None: none; k: the chosen token's and the k likeliest log-probabilities
    length_field: str = "max_new_tokens"  # what the client's API calls max_new_tokens (for refusals)
    prompt_field: str | None = None  # what the client's API calls the conversation, where one field holds it


@dataclass(frozen=True, slots=True)
class Preprocessor:
    tokenizer: JanusTokenizer
    images: ImageProcessor
    template: ChatTemplate
    vision_tokens: int  # placeholder positions per input image
    gen_tokens: int  # image tokens per generated image
    capacity: Capacity  # what fits the engine's KV memory

    @classmethod
    def from_dir(cls, directory: str | Path, cfg: JanusConfig, max_seq_len: int,
                 template: str | None = None, max_rows: int | None = None,
                 capacity: Capacity | None = None) -> Preprocessor:
        """capacity: the engine's (rows, context and KV pool); None: only max_seq_len and max_rows."""
        chat = get_template(template) if template else template_for_checkpoint(directory)
        return cls(JanusTokenizer.from_dir(directory), ImageProcessor.from_dir(directory), chat,
                   cfg.vision.num_tokens, cfg.gen_vision.num_tokens, capacity or Capacity(max_seq_len, max_rows))

    def max_images(self) -> int:
        """Images one question can carry here, at most MAX_IMAGES: with the default system prompt, a short
        question and room for a short answer. What `GET /info` promises."""
        for count in range(MAX_IMAGES, 0, -1):
            tags = IMAGE_TOKEN * count if count > 1 else ""
            ids = self._prompt_ids(question_conversation(f"{tags}What do these show?", count))
            if self.capacity.shortfall(len(ids), MIN_ANSWER_TOKENS) is None:
                return count
        return 0

    def max_parallel_size(self, limit: int) -> int:
        """Images one guided generation request (two rows each) with a short prompt can ask for here, at most
        `limit`. What `GET /info` promises."""
        prompt = len(self.tokenizer.encode_prompt(generation_prompt("a red fox in the snow", self.template)))
        for count in range(limit, 0, -1):
            if self.capacity.shortfall(prompt, self.gen_tokens, rows=2 * count, prompts=2) is None:
                return count
        return 0

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        system = DEFAULT_SYSTEM_PROMPT if conversation.system_prompt is None else conversation.system_prompt
        prompt = conversation_prompt([(turn.role, turn.content) for turn in conversation.turns], self.template,
                                     system)
        tok = self.tokenizer
        return expand_image_ids(tok.encode_prompt(prompt), tok.image_id, tok.boi_id, tok.eoi_id, self.vision_tokens)

    def understand(self, question: str, images: Sequence[Image.Image], *, system_prompt: str | None,
                   max_new_tokens: int | None, temperature: float, top_p: float, seed: int,
                   timeout_s: float | None, history: Sequence[tuple[str, str]] = ()) -> UnderstandParams:
        conversation = question_conversation(question, len(images), system_prompt, history)
        options = AnswerOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return self.chat(conversation, images, options, timeout_s)

    def check_fits(self, conversation: Conversation, options: AnswerOptions) -> None:
        """Refuse as `chat` does a conversation whose prompt and answers cannot fit, from the conversation alone:
        an image takes the same positions in the prompt whatever its pixels, so this runs before any is decoded."""
        ids = self._prompt_ids(conversation)
        self._check_answer_fits(len(ids), conversation.num_images, self._answer_length(len(ids), options), options)

    def chat(self, conversation: Conversation, images: Sequence[Image.Image], options: AnswerOptions,
             timeout_s: float | None) -> UnderstandParams:
        """A conversation (its images in the order they stand) -> the engine's parameters for answering it."""
        if conversation.num_images != len(images):
            raise InputError(f"the conversation places {conversation.num_images} image(s) but {len(images)} "
                             "were given")
        ids = self._prompt_ids(conversation)
        max_new_tokens = self._answer_length(len(ids), options)
        self._check_answer_fits(len(ids), len(images), max_new_tokens, options)
        pixels = None
        if images:
            try:
                pixels = self.images(images)
            except ValueError as err:  # an image PIL decoded but that cannot become RGB pixels
                raise InputError(f"cannot use the image: {err}") from None
        tok = self.tokenizer
        return UnderstandParams(prompt_ids=ids, pixel_values=pixels, max_new_tokens=max_new_tokens,
                                image_id=tok.image_id, temperature=options.temperature, top_p=options.top_p,
                                seed=options.seed, stop_ids=(tok.eos_id,), timeout_s=timeout_s, n=options.n,
                                answer_text=partial(AnswerDetokenizer, tok, options.stop), logprobs=options.logprobs)

    def _answer_length(self, prompt_tokens: int, options: AnswerOptions) -> int:
        """Unasked, answer as long as the context allows (up to the default), and at least one token."""
        return options.max_new_tokens or max(min(DEFAULT_MAX_NEW_TOKENS, self.capacity.room(prompt_tokens)), 1)

    def _check_answer_fits(self, prompt_tokens: int, num_images: int, max_new_tokens: int,
                           options: AnswerOptions) -> None:
        refusal = answer_refusal(self.capacity, prompt_tokens, max_new_tokens, options.n, images=num_images,
                                 image_positions=self.vision_tokens + 2,
                                 length_asked=options.max_new_tokens is not None, length_field=options.length_field,
                                 prompt_field=options.prompt_field)
        if refusal is not None:
            raise DoesNotFit(refusal)

    def generate(self, prompt: str, *, parallel_size: int, cfg_weight: float, temperature: float, seed: int,
                 timeout_s: float | None, count_field: str = "parallel_size", previews: int = 0) -> GenerateParams:
        """`count_field`: what the client's API calls parallel_size (for refusals); `previews`: partial images to
        decode while drawing (streamed requests only)."""
        if not prompt.strip():
            raise InputError("the prompt is empty")
        ids = self.tokenizer.encode_prompt(generation_prompt(prompt, self.template))
        refusal = image_refusal(self.capacity, len(ids), self.gen_tokens, parallel_size, cfg_weight != 1.0,
                                count_field)
        if refusal is not None:
            raise DoesNotFit(refusal)
        return GenerateParams(prompt_ids=ids, pad_id=self.tokenizer.pad_id, image_tokens=self.gen_tokens,
                              parallel_size=parallel_size, cfg_weight=cfg_weight, temperature=temperature,
                              seed=seed, timeout_s=timeout_s, previews=previews)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return token_bytes(self.tokenizer, token_id)
