"""Prompt text for Janus: the DeepSeek chat templates and image-tag expansion.

Layout (DeepSeek separator style): `{system}\\n\\n` (omitted when the system prompt is empty), then per
turn `{role}: {text}` followed by "\\n\\n" after a user turn and the EOS text after an assistant turn; the
turn the model is to write is the bare `{role}:`. "deepseek" is Janus-Pro's role naming, "legacy" is
Janus-1.3B's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
)

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

PROCESSOR_CONFIG_FILE = "processor_config.json"
MODEL_CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    name: str
    user_role: str
    assistant_role: str
    separator: str = "\n\n"
    turn_end: str = EOS_TOKEN  # closes an assistant turn

    def render(self, turns: Sequence[tuple[str, str]], system_prompt: str = "") -> str:
        """`turns` alternate user, assistant, user, ...; an empty text leaves that turn open (`{role}:`)."""
        text = system_prompt + self.separator if system_prompt else ""
        for index, (role, message) in enumerate(turns):
            message = message.strip()
            if message:
                text += f"{role}: {message}" + (self.separator if index % 2 == 0 else self.turn_end)
            else:
                text += f"{role}:"
        # The reference strips the assembled prompt: a whitespace-only system prompt leaves nothing behind.
        return text.strip()


DEEPSEEK = ChatTemplate("deepseek", USER_ROLE_TOKEN, ASSISTANT_ROLE_TOKEN)
LEGACY = ChatTemplate("legacy", "User", "Assistant")
TEMPLATES: dict[str, ChatTemplate] = {"deepseek": DEEPSEEK, "legacy": LEGACY}
# DeepSeek's own name for the older role naming.
_ALIASES = {"deepseek_old": "legacy"}


def get_template(name: str) -> ChatTemplate:
    key = _ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[key]


def understanding_prompt(
    question: str,
    template: ChatTemplate | str = DEEPSEEK,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    history: Sequence[tuple[str, str]] = (),
    num_images: int | None = None,
) -> str:
    """The prompt for answering `question`, after earlier (user, assistant) turns in `history`.

    Image tags are placed by the caller. With `num_images` given and no tag anywhere in the conversation, one
    `<image_placeholder>\\n` per image is put before the question (the reference layout); if tags are present
    their count must equal `num_images`.
    """
    chat = get_template(template) if isinstance(template, str) else template
    if num_images is not None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        tagged = sum(count_image_tags(u) + count_image_tags(a) for u, a in history)
        tagged += count_image_tags(question)
        if tagged == 0:
            question = (IMAGE_TOKEN + "\n") * num_images + question
        elif tagged != num_images:
            raise ValueError(f"the conversation references {tagged} image(s) but {num_images} were given")
    turns: list[tuple[str, str]] = []
    for user, assistant in history:
        turns += [(chat.user_role, user), (chat.assistant_role, assistant)]
    turns += [(chat.user_role, question), (chat.assistant_role, "")]
    return chat.render(turns, system_prompt)


def generation_prompt(prompt: str, template: ChatTemplate | str = DEEPSEEK) -> str:
    """The text-to-image prompt: no system prompt, an open assistant turn, then `<begin_of_image>`."""
    chat = get_template(template) if isinstance(template, str) else template
    return chat.render([(chat.user_role, prompt), (chat.assistant_role, "")]) + BOI_TOKEN


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
    """The same expansion on token ids (cheaper than tokenizing N copies of the tag)."""
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
