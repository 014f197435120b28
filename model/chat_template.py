"""Prompts for Janus: the DeepSeek chat templates and image placement.

Layout (DeepSeek separator style): `{system}\\n\\n` (omitted when the system prompt is empty), then per
turn `{role}: {text}` followed by "\\n\\n" after a user turn and the EOS token after an assistant turn; the
turn the model is to write is the bare `{role}:`. "deepseek" is Janus-Pro's role naming, "legacy" is
Janus-1.3B's.

A prompt is a sequence of segments (`model.special_tokens.Segment`): every `str` is plain text, tokenized as
ordinary text even when it spells a special token, and control tokens (roles, image markers, turn ends) are
`Special` segments that only this module places. So a question, system prompt or earlier turn cannot forge a
turn or an image marker: pass user text as `str`, and images as `IMAGE` segments where they belong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from model.special_tokens import (
    ASSISTANT_ROLE_TOKEN,
    BOI_TOKEN,
    EOI_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    USER_ROLE_TOKEN,
    Segment,
    Special,
)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

PROCESSOR_CONFIG_FILE = "processor_config.json"
MODEL_CONFIG_FILE = "config.json"

IMAGE = Special(IMAGE_TOKEN)  # one input image's position (expanded to its feature positions after tokenizing)
BEGIN_OF_IMAGE = Special(BOI_TOKEN)

# A turn's content: plain text, or plain text interleaved with `Special` segments (images).
Message = str | Sequence[Segment]


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt: plain text and template-placed control tokens, in order (adjacent text merged)."""

    segments: tuple[Segment, ...]

    @classmethod
    def of(cls, *parts: Message | Special | Prompt) -> Prompt:
        segments: list[Segment] = []
        for part in parts:
            if isinstance(part, Prompt):
                segments += part.segments
            elif isinstance(part, str | Special):
                segments.append(part)
            else:
                segments += part
        return cls(tuple(_merged(segments)))

    @property
    def text(self) -> str:
        """The prompt as one string, as DeepSeek's reference templates write it (for logs and tests only:
        tokenizing this string would read user text that spells a special token as that token)."""
        return "".join(s.token if isinstance(s, Special) else s for s in self.segments)

    def __add__(self, other: Message | Special | Prompt) -> Prompt:
        return Prompt.of(self, other)

    def count(self, token: Special) -> int:
        return sum(1 for s in self.segments if s == token)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    name: str
    user_role: Segment
    assistant_role: Segment
    separator: str = "\n\n"
    turn_end: Segment = Special(EOS_TOKEN)  # closes an assistant turn

    def render(self, turns: Sequence[tuple[Segment, Message]], system_prompt: Message = "") -> Prompt:
        """`turns` alternate user, assistant, user, ... as (role, message); an empty message leaves that turn
        open (`{role}:`). Messages and the system prompt are plain text apart from their `Special` segments."""
        segments: list[Segment] = []
        system = Prompt.of(system_prompt).segments
        if system:
            segments += [*system, self.separator]
        for index, (role, message) in enumerate(turns):
            content = _stripped(Prompt.of(message).segments)
            if content:
                segments += [role, ": ", *content, self.separator if index % 2 == 0 else self.turn_end]
            else:
                segments += [role, ":"]
        # The reference strips the assembled prompt: a whitespace-only system prompt leaves nothing behind.
        return Prompt(_stripped(_merged(segments)))


DEEPSEEK = ChatTemplate("deepseek", Special(USER_ROLE_TOKEN), Special(ASSISTANT_ROLE_TOKEN))
LEGACY = ChatTemplate("legacy", "User", "Assistant")
TEMPLATES: dict[str, ChatTemplate] = {"deepseek": DEEPSEEK, "legacy": LEGACY}
# DeepSeek's own name for the older role naming.
_ALIASES = {"deepseek_old": "legacy"}


def get_template(name: str) -> ChatTemplate:
    key = _ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[key]


def place_images(question: str) -> tuple[Segment, ...]:
    """The native API's question: each `<image_placeholder>` tag it contains marks an image's position.

    The only place where typed text becomes a control token; any other special token text stays plain.
    """
    segments: list[Segment] = []
    for index, piece in enumerate(question.split(IMAGE_TOKEN)):
        if index:
            segments.append(IMAGE)
        segments.append(piece)
    return tuple(_merged(segments))


def understanding_prompt(
    question: Message,
    template: ChatTemplate | str = DEEPSEEK,
    system_prompt: Message = DEFAULT_SYSTEM_PROMPT,
    history: Sequence[tuple[Message, Message]] = (),
    num_images: int | None = None,
) -> Prompt:
    """The prompt for answering `question`, after earlier (user, assistant) turns in `history`.

    Images are `IMAGE` segments placed by the caller (`place_images` for a question with tags). With
    `num_images` given and no image anywhere in the conversation, one `IMAGE` + "\\n" per image is put before
    the question (the reference layout); if images are placed, their count must equal `num_images`.
    """
    chat = get_template(template) if isinstance(template, str) else template
    question_segments = Prompt.of(question).segments
    if num_images is not None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        placed = sum(Prompt.of(u).count(IMAGE) + Prompt.of(a).count(IMAGE) for u, a in history)
        placed += Prompt.of(question).count(IMAGE)
        if placed == 0:
            question_segments = (IMAGE, "\n") * num_images + question_segments
        elif placed != num_images:
            raise ValueError(f"the conversation references {placed} image(s) but {num_images} were given")
    turns: list[tuple[Segment, Message]] = []
    for user, assistant in history:
        turns += [(chat.user_role, user), (chat.assistant_role, assistant)]
    turns += [(chat.user_role, question_segments), (chat.assistant_role, "")]
    return chat.render(turns, system_prompt)


def conversation_prompt(
    turns: Sequence[tuple[str, Message]],
    template: ChatTemplate | str = DEEPSEEK,
    system_prompt: Message = DEFAULT_SYSTEM_PROMPT,
) -> Prompt:
    """The prompt for answering a conversation: (role, message) turns, role "user" or "assistant", in any order.

    Every turn is closed as the reference chat template closes it, also when its message is empty or two turns of
    one role follow each other: a user turn by the separator, an assistant turn by the end-of-sentence token. Then
    the assistant's turn is opened. For alternating turns this is `understanding_prompt`'s layout.
    """
    chat = get_template(template) if isinstance(template, str) else template
    segments: list[Segment] = []
    system = Prompt.of(system_prompt).segments
    if system:
        segments += [*system, chat.separator]
    for role, message in turns:
        content = _stripped(Prompt.of(message).segments)
        if role == "user":
            segments += [chat.user_role, ": ", *content, chat.separator]
        elif role == "assistant":
            segments += [chat.assistant_role, ": ", *content, chat.turn_end]
        else:
            raise ValueError(f"a turn's role is user or assistant, not {role!r}")
    segments += [chat.assistant_role, ":"]
    return Prompt(_stripped(_merged(segments)))


def generation_prompt(prompt: Message, template: ChatTemplate | str = DEEPSEEK) -> Prompt:
    """The text-to-image prompt: no system prompt, an open assistant turn, then `<begin_of_image>`."""
    chat = get_template(template) if isinstance(template, str) else template
    return chat.render([(chat.user_role, prompt), (chat.assistant_role, "")]) + BEGIN_OF_IMAGE


def count_image_tags(text: str) -> int:
    return text.count(IMAGE_TOKEN)


class ExpandedPrompt(NamedTuple):
    text: str
    num_images: int


def expand_image_tags(text: str, num_image_tokens: int) -> ExpandedPrompt:
    """Each `<image_placeholder>` -> `<begin_of_image>` + N x `<image_placeholder>` + `<end_of_image>`."""
    if num_image_tokens <= 0:
        raise ValueError(f"num_image_tokens must be > 0, got {num_image_tokens}")
    block = BOI_TOKEN + IMAGE_TOKEN * num_image_tokens + EOI_TOKEN
    return ExpandedPrompt(text.replace(IMAGE_TOKEN, block), count_image_tags(text))


def expand_image_ids(ids: Sequence[int], image_id: int, boi_id: int, eoi_id: int,
                     num_image_tokens: int) -> list[int]:
    """The same expansion on token ids (cheaper than tokenizing N copies of the tag).

    Only the template places the image id (plain text never encodes to it), so every occurrence is an image.
    """
    if num_image_tokens <= 0:
        raise ValueError(f"num_image_tokens must be > 0, got {num_image_tokens}")
    block = [boi_id, *([image_id] * num_image_tokens), eoi_id]
    out: list[int] = []
    for token_id in ids:
        if token_id == image_id:
            out += block
        else:
            out.append(token_id)
    return out


def _merged(segments: Iterable[Segment]) -> list[Segment]:
    """Adjacent text joined, empty text dropped."""
    out: list[Segment] = []
    for segment in segments:
        if isinstance(segment, str):
            if not segment:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += segment
                continue
        out.append(segment)
    return out


def _stripped(segments: Sequence[Segment]) -> tuple[Segment, ...]:
    """`str.strip()` of the joined text: whitespace goes from the outer text segments, never a control token."""
    out = list(segments)
    while out and isinstance(out[0], str) and not out[0].strip():
        out.pop(0)
    if out and isinstance(out[0], str):
        out[0] = out[0].lstrip()
    while out and isinstance(out[-1], str) and not out[-1].strip():
        out.pop()
    if out and isinstance(out[-1], str):
        out[-1] = out[-1].rstrip()
    return tuple(out)


_LEGACY_NAME = re.compile(r"janus[-_ ]?1\.3b", re.IGNORECASE)


def template_for_checkpoint(directory: str | Path) -> ChatTemplate:
    """Pick the template a checkpoint was trained with.

    An explicit `chat_template`, or `sft_format: deepseek_old`, in processor_config.json or config.json
    decides. Otherwise the name: Janus-1.3B used the older roles although its processor says
    `sft_format: deepseek` (that format took its roles from the caller's messages), so the directory or
    model name is the only signal left.
    """
    path = Path(directory)
    configs = {name: _read_json(path / name) for name in (PROCESSOR_CONFIG_FILE, MODEL_CONFIG_FILE)}
    for name, raw in configs.items():
        explicit = raw.get("chat_template")
        if isinstance(explicit, str) and "{%" in explicit:
            # A Jinja template (Hugging Face conversions): only its role text tells which naming it uses.
            if USER_ROLE_TOKEN in explicit:
                return DEEPSEEK
        elif explicit is not None:
            if not isinstance(explicit, str) or _ALIASES.get(explicit, explicit) not in TEMPLATES:
                raise ValueError(
                    f"{path / name}: chat_template {explicit!r} is not one of {sorted(TEMPLATES)}")
            return get_template(explicit)
        if raw.get("sft_format") == "deepseek_old":
            return LEGACY
    model_config = configs[MODEL_CONFIG_FILE]
    # Every path part: a hub cache keeps the model name above an anonymous snapshot folder.
    names = [*path.resolve().parts, *(str(model_config.get(k, "")) for k in ("_name_or_path", "name"))]
    return LEGACY if any(_LEGACY_NAME.search(n) for n in names) else DEEPSEEK


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return raw
