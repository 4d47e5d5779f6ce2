"""Who may call what: the one decision for every HTTP request, and the checks it is made of.

`refusal` is asked once per request, by `GatewayApp` before it splits the inference routes
from the control app, so a route added to either set is guarded by its path alone:
API keys on /v1/*, the admin token (or, without one, loopback only) on /admin/*, the
probes and /metrics open. The checks are pure functions of ASGI scope values; the worker
uses `bearer_token` and `key_accepted` for its own token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection, Iterable
from typing import Any

from trio_gateway.errors import ErrorKind, GatewayError, invalid_api_key
from trio_gateway.http.asgi import Scope, header

API_PREFIX = "/v1/"
ADMIN_PREFIX = "/admin/"


def refusal(
    scope: Scope, api_keys: Collection[str], admin_token: str | None
) -> GatewayError | None:
    """Why this request may not go on (401, or 403 for a remote admin caller when no token
    is set), or None when it may. Empty `api_keys`: /v1/* is open."""
    path: str = scope["path"]
    if path.startswith(API_PREFIX):
        if api_keys and not key_accepted(bearer_token(header(scope, b"authorization")), api_keys):
            return invalid_api_key()
    elif path.startswith(ADMIN_PREFIX):
        if admin_token:
            if not key_accepted(bearer_token(header(scope, b"authorization")), [admin_token]):
                return admin_forbidden(token_set=True)
        elif not is_loopback(scope.get("client")):
            return admin_forbidden(token_set=False)
    return None


def admin_forbidden(*, token_set: bool) -> GatewayError:
    return GatewayError(
        ErrorKind.UNAUTHORIZED,
        "Admin endpoints need the admin token"
        if token_set
        else "Admin endpoints answer only loopback clients when no --admin-token is set.",
        code="admin_forbidden",
        status_override=401 if token_set else 403,
    )


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
