"""The base of every /v1 request model: fields the server does not know are accepted, ignored and logged once.

OpenAI adds request fields often, and clients such as LiteLLM and chat UIs send their own; a newer client must keep
working against this server. The native routes keep refusing unknown fields (`extra="forbid"`): there a misspelt
option is a mistake worth reporting.
"""

from __future__ import annotations

import logging
import threading

from pydantic import BaseModel, ConfigDict, model_validator

log = logging.getLogger(__name__)

# Field names are client-controlled: remember a bounded number, so that a client sending ever new names can
# neither grow memory nor flood the log.
MAX_REMEMBERED_FIELDS = 512


class _UnknownFields:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._full_reported = False

    def note(self, where: str, names: list[str]) -> None:
        with self._lock:
            for name in names:
                key = f"{where}.{name}"
                if key in self._seen:
                    continue
                if len(self._seen) >= self._limit:
                    if not self._full_reported:
                        self._full_reported = True
                        log.warning("more than %d distinct unknown request fields seen; no longer logging them",
                                    self._limit)
                    return
                self._seen.add(key)
                log.info("ignoring unknown request field %r in %s (logged once per field name)", name[:100], where)

    def seen(self) -> set[str]:
        with self._lock:
            return set(self._seen)


unknown_fields = _UnknownFields(MAX_REMEMBERED_FIELDS)


class OpenAIModel(BaseModel):
    """Accepts fields it does not declare (kept out of everything the server reads) and logs each name once."""

    # NaN and Infinity are no numbers to sample with: refused as "must be a finite number", as on the native routes
    # (without this, NaN fails the range check instead and the message says "must be less than or equal to 2").
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _note_unknown_fields(self) -> OpenAIModel:
        if self.model_extra:
            unknown_fields.note(type(self).__name__, list(self.model_extra))
        return self
