"""Stop texts: an answer ends where its text first contains one of them, and that text is not returned.

The engine asks a `StopTexts` watcher after every token of an answer (it never sees the tokenizer itself); the API
side cuts the finished text at the first stop text, and while streaming holds back any tail that could still grow
into one, so no part of a stop text is ever sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.tokenizer import JanusTokenizer


class StopTexts:
    """Watches one answer's tokens (the engine's `StopWatch`)."""

    def __init__(self, tokenizer: JanusTokenizer, stops: Sequence[str]) -> None:
        self._detokenizer = tokenizer.detokenizer()
        self._stops = tuple(stops)
        self._keep = max(len(s) for s in stops) - 1  # text before the new piece that can still be part of a stop
        self._tail = ""

    def push(self, token_id: int) -> bool:
        piece = self._detokenizer.push(token_id)
        if not piece:
            return False
        window = self._tail + piece
        self._tail = window[len(window) - self._keep:] if self._keep else ""
        return any(stop in window for stop in self._stops)


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
