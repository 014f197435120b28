"""From a question and images (or a prompt) to the engine's parameters: chat template, token ids, pixel values.

Knows nothing of HTTP: the API layer decodes uploads into PIL images and calls this; errors are `InputError`
with a message meant for the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from model.chat_template import (
    DEFAULT_SYSTEM_PROMPT,
    ChatTemplate,
    count_image_tags,
    expand_image_ids,
    generation_prompt,
    get_template,
    place_images,
    template_for_checkpoint,
    understanding_prompt,
)
from model.config import JanusConfig
from model.image_processing import ImageProcessor
from model.special_tokens import IMAGE_TOKEN
from model.tokenizer import IncrementalDetokenizer, JanusTokenizer
from service.engine.types import GenerateParams, UnderstandParams

DEFAULT_MAX_NEW_TOKENS = 256


class InputError(ValueError):
    """The request's content cannot be turned into a model input (the client's mistake)."""


def check_image_tags(question: str, num_images: int) -> None:
    """Images are placed by `<image_placeholder>` tags; a single image may go without one (reference layout)."""
    tags = count_image_tags(question)
    if num_images < 1:
        raise InputError("at least one image is required")
    if tags == 0 and num_images > 1:
        raise InputError(f"{num_images} images were given: place each with an {IMAGE_TOKEN} tag in the question")
    if tags and tags != num_images:
        raise InputError(f"the question has {tags} {IMAGE_TOKEN} tag(s) but {num_images} image(s) were given")


@dataclass(frozen=True, slots=True)
class Preprocessor:
    tokenizer: JanusTokenizer
    images: ImageProcessor
    template: ChatTemplate
    vision_tokens: int  # placeholder positions per input image
    gen_tokens: int  # image tokens per generated image
    max_seq_len: int  # the engine's per-row context

    @classmethod
    def from_dir(cls, directory: str | Path, cfg: JanusConfig, max_seq_len: int,
                 template: str | None = None) -> Preprocessor:
        chat = get_template(template) if template else template_for_checkpoint(directory)
        return cls(JanusTokenizer.from_dir(directory), ImageProcessor.from_dir(directory), chat,
                   cfg.vision.num_tokens, cfg.gen_vision.num_tokens, max_seq_len)

    def understand(self, question: str, images: Sequence[Image.Image], *, system_prompt: str | None,
                   max_new_tokens: int | None, temperature: float, top_p: float, seed: int,
                   timeout_s: float | None) -> UnderstandParams:
        check_image_tags(question, len(images))
        # Tags in the question place the images; everything else the user wrote, the system prompt included, is
        # plain text (typed special tokens included).
        prompt = understanding_prompt(place_images(question), self.template,
                                      DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt,
                                      num_images=len(images))
        tok = self.tokenizer
        ids = expand_image_ids(tok.encode_prompt(prompt), tok.image_id, tok.boi_id, tok.eoi_id, self.vision_tokens)
        if max_new_tokens is None:
            # Unasked, answer as long as the context allows (up to the default); an explicit value that does not
            # fit is the engine's to refuse.
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, self.max_seq_len - len(ids))
            if max_new_tokens < 1:
                raise InputError(f"the prompt is {len(ids)} tokens (images included); the context is "
                                 f"{self.max_seq_len}: shorten the question or send fewer images")
        try:
            pixels = self.images(images)
        except ValueError as err:  # an image PIL decoded but that cannot become RGB pixels
            raise InputError(f"cannot use the image: {err}") from None
        return UnderstandParams(prompt_ids=ids, pixel_values=pixels, max_new_tokens=max_new_tokens,
                                image_id=tok.image_id, temperature=temperature, top_p=top_p, seed=seed,
                                stop_ids=(tok.eos_id,), timeout_s=timeout_s)

    def generate(self, prompt: str, *, parallel_size: int, cfg_weight: float, temperature: float, seed: int,
                 timeout_s: float | None) -> GenerateParams:
        if not prompt.strip():
            raise InputError("the prompt is empty")
        ids = self.tokenizer.encode_prompt(generation_prompt(prompt, self.template))
        return GenerateParams(prompt_ids=ids, pad_id=self.tokenizer.pad_id, image_tokens=self.gen_tokens,
                              parallel_size=parallel_size, cfg_weight=cfg_weight, temperature=temperature,
                              seed=seed, timeout_s=timeout_s)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def detokenizer(self) -> IncrementalDetokenizer:
        return self.tokenizer.detokenizer()
