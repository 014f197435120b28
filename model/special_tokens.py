"""The special token strings of the Janus / Janus-Pro tokenizer.

Shared by the tokenizer wrapper, the chat templates and the tiny-tokenizer builder so they cannot drift.
The full-width bars and `▁` in the sentence markers are part of DeepSeek's token text, not typos.
"""

from __future__ import annotations

from dataclasses import dataclass

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
USER_ROLE_TOKEN = "<|User|>"
ASSISTANT_ROLE_TOKEN = "<|Assistant|>"

# Every token the tiny tokenizer registers as special, in id order after the trained vocabulary.
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    IMAGE_TOKEN,
    BOI_TOKEN,
    EOI_TOKEN,
    USER_ROLE_TOKEN,
    ASSISTANT_ROLE_TOKEN,
)

# The tokens Janus gives meaning to. Whatever flags a checkpoint's tokenizer.json gives them, text written by a
# user never turns into one of these: only the chat template places them (as `Special` segments).
CONTROL_TOKENS: frozenset[str] = frozenset(TINY_SPECIAL_TOKENS)


@dataclass(frozen=True, slots=True)
class Special:
    """A control token placed by the prompt's template (a role, an image marker, a turn end).

    Prompts are sequences of segments: plain `str` is text as written (by a user or the template), tokenized as
    ordinary text in which no special token is recognised; `Special` is the one way to put a control token in.
    """

    token: str


Segment = str | Special
