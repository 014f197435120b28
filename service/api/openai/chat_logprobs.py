"""Chat logprobs that describe exactly the returned content: the `bytes` of the listed tokens, joined, are the text.

One rule for every token: its `token` and `bytes` are what it adds to the answer's text. A control token the text
leaves out (`<|User|>`, the begin-of-sentence token: a sampled answer of a small model can hold them; the decoder
skips them) is listed with its log-probability, no text and no bytes, so the list still has one entry per generated
token. Alternatives in `top_logprobs` follow the same rule: what they would have added.

An answer cut by a stop text lists its tokens up to the cut: the token that runs into the stop text is listed with
only its bytes before it, and the tokens after it are not listed. Streamed, a token's entry is sent with the text
it completes, so each chunk's logprobs describe that chunk's content.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.api.openai.chat_protocol import ChatCompletionTokenLogprob, TopLogprob
from service.engine.types import TokenLogprob
from service.processing import Preprocessor

# A log-probability of a token the sampler could not pick (outside the nucleus): JSON has no -infinity.
IMPOSSIBLE_LOGPROB = -9999.0


def text_bytes(prep: Preprocessor, token_id: int) -> bytes:
    """What one token adds to the answer's text, as bytes (a byte-level token can hold part of a character)."""
    if prep.tokenizer.is_special(token_id):
        return b""
    return prep.token_bytes(token_id)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def content_bytes(joined: bytes, text: str) -> int:
    """How many bytes of `joined` (an answer's token bytes) decode to `text`, a prefix of the answer's text."""
    encoded = text.encode("utf-8")
    if joined.startswith(encoded):
        return len(encoded)
    # Invalid UTF-8 in the answer (shown as U+FFFD): search. Decoded length never shrinks as bytes are added.
    low, high = 0, len(joined)
    while low < high:
        middle = (low + high) // 2
        if len(_decode(joined[:middle])) >= len(text):
            high = middle
        else:
            low = middle + 1
    for end in range(low, len(joined) + 1):
        decoded = _decode(joined[:end])
        if decoded == text:
            return end
        if len(decoded) > len(text):
            break
    return low  # the tokenizer decoded differently from UTF-8 with replacement: the nearest length


@dataclass(slots=True)
class _Token:
    token_id: int
    logprob: TokenLogprob
    data: bytes  # what it adds to the text
    start: int  # where its bytes begin in the answer's bytes


class ContentLogprobs:
    """One answer's tokens as they come; hands out the entries of those the content has reached."""

    def __init__(self, prep: Preprocessor) -> None:
        self._prep = prep
        self._joined = bytearray()
        self._pending: list[_Token] = []

    def push(self, token_id: int, logprob: TokenLogprob) -> None:
        data = text_bytes(self._prep, token_id)
        self._pending.append(_Token(token_id, logprob, data, len(self._joined)))
        self._joined += data

    def release(self, content: str, final: bool = False) -> list[ChatCompletionTokenLogprob]:
        """Entries for the tokens `content` (the text sent so far; with `final` the answer's whole text) covers
        that were not handed out yet. Before the end a token is handed out once its bytes are all in `content`."""
        end = content_bytes(bytes(self._joined), content)
        if final and end == len(self._joined):
            taken = len(self._pending)  # the whole answer: every token, also trailing ones that add no text
        else:
            covered = [i for i, token in enumerate(self._pending) if token.data and (
                token.start < end if final else token.start + len(token.data) <= end)]
            taken = covered[-1] + 1 if covered else 0
        out = [self._entry(token, end) for token in self._pending[:taken]]
        del self._pending[:taken]
        return out

    def _entry(self, token: _Token, end: int) -> ChatCompletionTokenLogprob:
        data = token.data[:max(end - token.start, 0)]
        top = [TopLogprob(token=_decode(other), logprob=max(value, IMPOSSIBLE_LOGPROB), bytes=list(other))
               for other, value in ((text_bytes(self._prep, other_id), value) for other_id, value in token.logprob.top)]
        return ChatCompletionTokenLogprob(token=_decode(data), logprob=max(token.logprob.logprob, IMPOSSIBLE_LOGPROB),
                                          bytes=list(data), top_logprobs=top)
