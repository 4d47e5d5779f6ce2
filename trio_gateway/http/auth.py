"""API keys on /v1/*, the admin token on /admin/*: pure checks on ASGI headers."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any


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


def is_loopback(client: Any) -> bool:
    """`client` is the ASGI scope's (host, port) pair, or None when unknown."""
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False
