"""The special token strings of the Janus / Janus-Pro tokenizer.

Shared by the tokenizer wrapper, the chat templates and the tiny-tokenizer builder so they cannot drift.
The full-width bars and `▁` in the sentence markers are part of DeepSeek's token text, not typos.
"""

from __future__ import annotations

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
