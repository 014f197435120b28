"""An answer's text, made once from its tokens: what a stream may send as they come, where a stop text ends it, and
its final text.

The engine feeds an `AnswerDetokenizer` each token of an answer (the engine's `AnswerText`: it never sees the
tokenizer itself) and hands its pieces and final text to the API side, which sends them as they are. An answer ends
on the token whose text completes a stop text, and the stop text is not returned; while the answer grows, a tail that
could still become a stop text is held back, so no part of one is ever sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.tokenizer import JanusTokenizer


class AnswerDetokenizer:
    def __init__(self, tokenizer: JanusTokenizer, stops: Sequence[str] = ()) -> None:
        self._detokenizer = tokenizer.detokenizer()
        self._stops = tuple(stops)
        self._keep = max((len(s) for s in stops), default=1) - 1  # text before a new piece that can end a stop
        self._tail = ""
        self._sent = 0  # characters handed out by `push`

    def push(self, token_id: int) -> tuple[str, bool]:
        piece = self._detokenizer.push(token_id)
        stopped = False
        if piece and self._stops:
            window = self._tail + piece
            self._tail = window[len(window) - self._keep:] if self._keep else ""
            stopped = any(stop in window for stop in self._stops)
        text = self._detokenizer.text
        end = releasable(text, self._stops) if self._stops else len(text)
        released = text[self._sent:end]
        self._sent = max(self._sent, end)
        return released, stopped

    def final(self, finish_reason: str) -> str:
        self._detokenizer.flush()
        text = self._detokenizer.text
        return cut_at_stop(text, self._stops) if finish_reason == "stop" and self._stops else text


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop text starts in `text`, or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    end = first_stop(text, stops)
    return text if end is None else text[:end]


def releasable(text: str, stops: Sequence[str]) -> int:
    """How much of a growing answer can be sent now: up to its first stop text, and short of a tail that is the
    beginning of one (the next tokens may complete it)."""
    end = first_stop(text, stops)
    if end is not None:
        return end
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return len(text) - held
