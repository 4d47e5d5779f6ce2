"""Who may call what: the one decision for every HTTP request, and the checks it is made of.

`refusal` is asked once per request, by `GatewayApp` before it splits the inference routes
from the control app, so a route added to either set is guarded by its path alone:
API keys on /v1/* (and vLLM's /tokenize, /detokenize), the admin token (or, without one,
loopback only) on /admin/*, the probes and /metrics open. The checks are pure functions of
ASGI scope values; the worker uses `bearer_token` and `key_accepted` for its own token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from trio_gateway.bearer import bearer_token, key_accepted
from trio_gateway.errors import ErrorKind, GatewayError, invalid_api_key
from trio_gateway.http.asgi import Scope, header

API_PREFIX = "/v1/"
# vLLM's tokenizer routes live at the server's root, but they are API calls like any under
# /v1/: routed to a backend, holding one of its slots, telling which models it serves. So
# the API key guards them too; an open /tokenize would be a free way round the key.
API_ROOT_PATHS = frozenset({"/tokenize", "/detokenize"})
ADMIN_PREFIX = "/admin/"


def refusal(
    scope: Scope, path: str, api_keys: Collection[str], admin_token: str | None
) -> GatewayError | None:
    """Why this request may not go on (401, or 403 for a remote admin caller when no token
    is set), or None when it may. Empty `api_keys`: the API is open. `path` is
    `app_path(scope)`, the spelling both route sets match (`GatewayApp` reads it once)."""
    if path.startswith(API_PREFIX) or path in API_ROOT_PATHS:
        if api_keys and not key_accepted(bearer_token(header(scope, b"authorization")), api_keys):
            return invalid_api_key()
    elif path.startswith(ADMIN_PREFIX):
        if admin_token:
            if not key_accepted(bearer_token(header(scope, b"authorization")), [admin_token]):
                return admin_forbidden(token_set=True)
        elif not is_loopback(scope.get("client")):
            return admin_forbidden(token_set=False)
    return None


def canonical_path(path: str) -> str:
    """The path every router reads: that of an absolute-form target (`POST
    http://host/admin/drain`, RFC 9112 3.2.2), with `.` and `..` segments removed (RFC 3986
    5.2.4). Empty segments stay: a worker's id in `DELETE /admin/workers/ws://host:9001` is
    a URL."""
    if not path.startswith("/"):
        path = urlsplit(path).path or "/"
    segments: list[str] = []
    parts = path.split("/")[1:]
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if segment == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif segment == ".":
            if last:
                segments.append("")
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def app_path(scope: Scope) -> str:
    """The path both route sets match, as quart reads it: under a `root_path` (hypercorn's
    `--root-path`) the rest of the path, or no route at all when it is outside the root;
    then `routed_path`. Auth and the inference dispatch judge this spelling, so a prefix
    cannot make an admin route look like an open one."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root:
        if path == root or not path.startswith(root):
            return " "  # quart's "no route" (a space is no path): a 404
        path = path.removeprefix(root)
    return routed_path(path)


def routed_path(path: str) -> str:
    """The path as werkzeug matches the control app's static route parts: runs of slashes
    as one, so `//admin/drain` reaches the drain route. What a path is guarded as, and which
    inference route it names, is read from this spelling."""
    while "//" in path:
        path = path.replace("//", "/")
    return path


def admin_forbidden(*, token_set: bool) -> GatewayError:
    return GatewayError(
        ErrorKind.UNAUTHORIZED,
        "Admin endpoints need the admin token"
        if token_set
        else "Admin endpoints answer only loopback clients when no --admin-token is set.",
        code="admin_forbidden",
        status_override=401 if token_set else 403,
    )


__all__ = [
    "admin_forbidden",
    "app_path",
    "bearer_token",
    "canonical_path",
    "is_loopback",
    "key_accepted",
    "refusal",
    "routed_path",
]


def is_loopback(client: Any) -> bool:
    """`client` is the ASGI scope's (host, port) pair, or None when unknown."""
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False
