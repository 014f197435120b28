"""A conversation as both APIs hand it to the preprocessor: turns of plain text with images placed in them.

The native route builds one from `question` (+ `history`, `system_prompt`); the OpenAI route from `messages`. From
here on there is one path to the engine's parameters (`Preprocessor.chat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from model.chat_template import IMAGE
from model.special_tokens import Segment, Special

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: tuple[Segment, ...]  # plain text (`str`) and `IMAGE` where an image stands

    @property
    def num_images(self) -> int:
        return sum(1 for segment in self.content if segment == IMAGE)


@dataclass(frozen=True, slots=True)
class Conversation:
    turns: tuple[Turn, ...]  # the last one is the user's, the one to answer
    system_prompt: str | None = None  # None: the model's default system prompt; "": none

    @property
    def num_images(self) -> int:
        return sum(turn.num_images for turn in self.turns)


def join_parts(parts: Sequence[str | Special]) -> tuple[Segment, ...]:
    """A message given as parts (OpenAI's content list) -> segments, joined as the reference chat template joins
    them: the first part's leading and the last part's trailing whitespace dropped, adjacent text parts separated
    by a space, and an image separated from the parts around it by a newline."""
    out: list[Segment] = []
    for index, part in enumerate(parts):
        first, last = index == 0, index == len(parts) - 1
        if isinstance(part, Special):
            out += [*([] if first else ["\n"]), part, *([] if last else ["\n"])]
            continue
        text = part.lstrip() if first else part
        text = text.rstrip() if last else text
        out.append(" " + text if not first and isinstance(parts[index - 1], str) else text)
    return tuple(s for s in out if s != "")
