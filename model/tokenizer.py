"""Text <-> ids for Janus checkpoints, from the checkpoint's own `tokenizer.json` (local files only).

The post-processor in `tokenizer.json` is ignored and BOS is prepended here, so DeepSeek's tokenizer (whose
post-processor adds BOS) and tokenizers without one (tiny test checkpoints) produce the same ids.

Prompts are encoded from segments (`encode_prompt`): plain text through a copy of the tokenizer that recognises
no special token in it (`encode_plain`), control tokens by their id. User text that spells `<|User|>` or the
end-of-sentence token is thus ordinary text; only the chat template places control tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from model.chat_template import Prompt
from model.special_tokens import (
    BOI_TOKEN,
    BOS_TOKEN,
    CONTROL_TOKENS,
    EOI_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    Segment,
    Special,
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


class TokenizerError(ValueError):
    """A checkpoint's tokenizer files are missing, unreadable or lack a token Janus needs."""


class JanusTokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the tokens Janus gives meaning to."""

    def __init__(self, tokenizer: Tokenizer, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN,
                 source: str = TOKENIZER_FILE) -> None:
        self._tok = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._ids = {
            name: _required_id(tokenizer, token, source)
            for name, token in (("bos", bos_token), ("eos", eos_token), ("pad", PAD_TOKEN),
                                ("image", IMAGE_TOKEN), ("boi", BOI_TOKEN), ("eoi", EOI_TOKEN))
        }
        # Prompts carry these as text; a token that is only in the BPE vocabulary (not an added token)
        # would be split into pieces, and image features would silently land nowhere.
        for token in (eos_token, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN):
            ids = tokenizer.encode(token, add_special_tokens=False).ids
            if ids != [tokenizer.token_to_id(token)]:
                raise TokenizerError(f"{source}: {token!r} is not an added token: text containing it "
                                     f"encodes to {ids} instead of one id")
        added_tokens = tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(token_id for token_id, added in added_tokens.items() if added.special)
        self._added_ids = {added.content: token_id for token_id, added in added_tokens.items()}
        self._plain = _plain_text_tokenizer(tokenizer, CONTROL_TOKENS | {bos_token, eos_token})

    @classmethod
    def from_dir(cls, path: str | Path) -> JanusTokenizer:
        """`tokenizer.json`, with BOS/EOS text from special_tokens_map.json / tokenizer_config.json."""
        directory = Path(path)
        tokenizer_file = directory / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise TokenizerError(f"tokenizer file not found: {tokenizer_file}")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:  # the Rust side raises a bare Exception for any parse failure
            raise TokenizerError(f"{tokenizer_file} is not a valid tokenizer.json: {err}") from None
        bos = _configured_token(directory, "bos_token") or BOS_TOKEN
        eos = _configured_token(directory, "eos_token") or EOS_TOKEN
        return cls(tokenizer, bos_token=bos, eos_token=eos, source=str(tokenizer_file))

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Trusted text (not from a user): special token text in it becomes the special token."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_plain(self, text: str) -> list[int]:
        """Text as ordinary text: no special or control token is recognised in it, whatever it spells."""
        return self._plain.encode(text, add_special_tokens=False).ids if text else []

    def encode_prompt(self, prompt: Prompt | Iterable[Segment], add_bos: bool = True) -> list[int]:
        """A prompt's ids: its text segments as plain text, its `Special` segments as their token.

        Adjacent text is encoded as one
        piece, so a prompt without user-typed special tokens gets exactly the ids of encoding its joined text
        (the tokenizer splits text at special tokens before anything else).
        """
        ids = [self.bos_id] if add_bos else []
        for piece in self._pieces(prompt.segments if isinstance(prompt, Prompt) else prompt):
            ids += self.encode_plain(piece) if isinstance(piece, str) else [piece]
        return ids

    def _pieces(self, segments: Iterable[Segment]) -> Iterator[str | int]:
        """Runs of text (joined) and control token ids. A `Special` this tokenizer has no token for is text to it
        (a legacy checkpoint without role tokens), exactly as when the joined prompt is encoded."""
        text = ""
        for segment in segments:
            if isinstance(segment, Special):
                token_id = self._added_ids.get(segment.token)
                if token_id is not None:
                    if text:
                        yield text
                        text = ""
                    yield token_id
                    continue
                segment = segment.token
            text += segment
        if text:
            yield text

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def image_id(self) -> int:
        return self._ids["image"]

    @property
    def boi_id(self) -> int:
        return self._ids["boi"]

    @property
    def eoi_id(self) -> int:
        return self._ids["eoi"]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


class IncrementalDetokenizer:
    """Turns a stream of generated ids into text deltas for streaming.

    Byte-level BPE can end a token in the middle of a multi-byte UTF-8 character; decoding then yields U+FFFD.
    Such text is held back until a later token completes the character. Only a short window of ids is decoded
    per step (the last emitted token plus the new ones), so each step costs O(1), not O(length).
    The deltas of `push` plus `flush` concatenate to `decode(all_ids)`.
    """

    def __init__(self, tokenizer: JanusTokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window: ids before it are fully emitted
        self._read = 0  # ids before it are emitted; ids from it on are pending
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def push_many(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """End of stream: release held-back text even if it ends in an incomplete character."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        emitted = self._decode(self._ids[self._prefix:self._read])
        window = self._decode(self._ids[self._prefix:])
        if not final and (len(window) <= len(emitted) or window.endswith("\ufffd")):
            return ""
        delta = window[len(emitted):]
        self._prefix, self._read = self._read, len(self._ids)
        # Ids before the window never matter again.
        del self._ids[:self._prefix]
        self._read -= self._prefix
        self._prefix = 0
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip) if ids else ""


def _plain_text_tokenizer(tokenizer: Tokenizer, control_tokens: Iterable[str]) -> Tokenizer:
    """A copy that splits no special token out of the text (`encode_special_tokens`), with the control tokens
    marked special first: a checkpoint may list one as a non-special added token, which would still match.

    Non-special added tokens (DeepSeek's file has a few single characters among them) still match, as in the
    reference tokenizer, so ordinary text gets the same ids either way.
    """
    raw = json.loads(tokenizer.to_str())
    control = set(control_tokens)
    for entry in raw.get("added_tokens", []):
        if entry.get("content") in control:
            entry["special"] = True
    plain = Tokenizer.from_str(json.dumps(raw))
    plain.encode_special_tokens = True
    return plain


def _required_id(tokenizer: Tokenizer, token: str, source: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise TokenizerError(f"{source} has no token {token!r}, which Janus needs")
    return token_id


def _configured_token(directory: Path, key: str) -> str | None:
    """`bos_token` / `eos_token` text; the value may be a string or an AddedToken dict with `content`."""
    for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
        raw = _read_json(directory / name)
        value: Any = raw.get(key) if raw else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return raw
