"""Bearer tokens: reading one from an `Authorization` header and checking it against the
accepted ones in constant time. Shared by the HTTP routes' auth and the worker plane's
handshake, which both take `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def bearer_token(authorization: bytes | str | None) -> str | None:
    if authorization is None:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_accepted(token: str | None, keys: Iterable[str]) -> bool:
    """Compares against every key in constant time, so timing tells nothing about keys."""
    if token is None:
        return False
    candidate = token.encode()
    accepted = False
    for key in keys:
        accepted |= hmac.compare_digest(candidate, key.encode())
    return accepted
