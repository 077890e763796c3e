"""API keys with scopes (read, write, admin), sent as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.

Keys come from the environment (see ``settings``). No key or an unknown key: 401; a key without the
scope the route needs: 403.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")


@dataclass(frozen=True)
class Principal:
    key_id: str          # a short, non-secret label for logs
    scopes: frozenset[str]


def _lookup(keys: dict[str, frozenset[str]], presented: str) -> frozenset[str] | None:
    # Compare against every key in constant time, so timing does not leak how much of a key matched.
    found = None
    for key, scopes in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = scopes
    return found


def require(scope: str):
    """Dependency: the request carries a key with ``scope``."""

    async def check(request: Request, api_key: str | None = Depends(api_key_header),
              token: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        settings = request.app.state.settings
        if settings.auth_disabled:
            return Principal("auth-disabled", frozenset({"read", "write", "admin"}))
        presented = api_key or (token.credentials if token is not None else None)
        if not presented:
            raise HTTPException(401, "missing API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})
        scopes = _lookup(settings.api_keys, presented)
        if scopes is None:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if scope not in scopes:
            raise HTTPException(403, f"this API key lacks the '{scope}' scope (it has: {', '.join(sorted(scopes))})")
        return Principal(presented[:4] + "…", scopes)

    check.__name__ = f"require_{scope}"
    return check
