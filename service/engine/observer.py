"""What the engine reports about itself. The API layer plugs in a Prometheus implementation."""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    def on_step(self, batch_rows: int, seconds: float, text_tokens: int, image_tokens: int) -> None:
        """One engine step ran: all running rows in one backbone forward (prefills included in `seconds`)."""

    def on_queue(self, waiting: int, running_rows: dict[str, int]) -> None:
        """Queue depth (requests) and running rows by kind ("understand", "generate") after a step."""

    def on_failure(self, kind: str) -> None:
        """A request failed inside the engine (kind: "model", "timeout", "cancelled", "overloaded", ...)."""

    def on_speculation(self, drafted: int, accepted: int, forwards: int, tokens: int) -> None:
        """A step verified `drafted` draft image tokens and kept `accepted` of them; `forwards` images took part
        and kept `tokens` tokens in all (accepted drafts plus one each)."""


class NullObserver:
    def on_step(self, batch_rows: int, seconds: float, text_tokens: int, image_tokens: int) -> None:
        pass

    def on_queue(self, waiting: int, running_rows: dict[str, int]) -> None:
        pass

    def on_failure(self, kind: str) -> None:
        pass

    def on_speculation(self, drafted: int, accepted: int, forwards: int, tokens: int) -> None:
        pass
