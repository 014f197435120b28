"""Optional API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Without a configured key, all pass.

Declared as FastAPI security dependencies so that the OpenAPI document and generated clients know both schemes.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import Unauthorized

bearer_scheme = HTTPBearer(auto_error=False, description="The server's API key as a bearer token.")
header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's API key.")


def _matches(given: str | None, expected: str) -> bool:
    # Constant-time: the comparison must not reveal how much of a guess was right.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header_key: Annotated[str | None, Depends(header_scheme)],
) -> None:
    expected = request.app.state.settings.api_key_value()
    if expected is None:
        return
    if _matches(bearer.credentials if bearer else None, expected) or _matches(header_key, expected):
        return
    given = "was wrong" if bearer or header_key else "is missing"
    raise Unauthorized(f"the API key {given}: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


Authenticated = Depends(require_api_key)
