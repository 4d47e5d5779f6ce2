"""API keys on /v1/*, the admin token on /admin/*: pure checks on ASGI headers."""

from __future__ import annotations

import ipaddress
from typing import Any

from trio_gateway.bearer import bearer_token, key_accepted

__all__ = ["bearer_token", "is_loopback", "key_accepted"]


def is_loopback(client: Any) -> bool:
    """`client` is the ASGI scope's (host, port) pair, or None when unknown."""
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False
