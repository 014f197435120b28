"""The bytes a single token stands for (what OpenAI's logprobs report as `bytes`).

Decoding one token of a byte-level BPE can give half a UTF-8 character (shown as U+FFFD); its bytes are exact.
Byte-level vocabularies write each byte as one printable character (GPT-2's table: printable Latin-1 bytes are
themselves, the other 68 bytes are shifted to U+0100 and up); this inverts that table.
"""

from __future__ import annotations

from functools import cache

from model.tokenizer import JanusTokenizer


@cache
def _char_to_byte() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def token_bytes(tokenizer: JanusTokenizer, token_id: int) -> bytes:
    piece = tokenizer.id_to_token(token_id)
    table = _char_to_byte()
    if piece is not None and not tokenizer.is_special(token_id) and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")
