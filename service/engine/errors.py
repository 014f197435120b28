"""Engine failures. Each has a `kind` (a metrics label) and maps to one HTTP status in the API's error table."""

from __future__ import annotations


class EngineError(Exception):
    kind = "internal"


class Overloaded(EngineError):
    """Capacity and waiting queue are full: try again later."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidRequest(EngineError):
    """The request can never run here (too long for the context, more rows than the engine has)."""

    kind = "invalid"


class RequestTimeout(EngineError):
    kind = "timeout"


class RequestCancelled(EngineError):
    kind = "cancelled"


class EngineStopped(EngineError):
    """The engine is shutting down or its loop has died."""

    kind = "stopped"


class ModelFailure(EngineError):
    """An exception inside the model while processing this request."""

    kind = "model"
