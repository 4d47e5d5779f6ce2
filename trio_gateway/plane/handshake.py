"""The request plane's handshake, both sides: the headers a gateway opens a connection with,
and the worker's verdict on them, as pure functions of headers (the socket is the caller's).

A gateway and a worker must speak the same protocol version, and when the worker has a
token, the gateway must present it as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trio_gateway.bearer import bearer_token, key_accepted
from trio_gateway.plane.frames import PROTOCOL_VERSION

PROTOCOL_HEADER = b"x-trio-gateway-protocol"
# A frame may hold a whole unary answer or a generate's body: both ends allow this much.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_OUR_VERSION = str(PROTOCOL_VERSION).encode()


def opening_headers(token: str | None) -> list[tuple[bytes, bytes]]:
    """What the gateway sends with its WebSocket upgrade."""
    headers = [(PROTOCOL_HEADER, _OUR_VERSION)]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    return headers


@dataclass(frozen=True, slots=True)
class Refusal:
    """The worker's answer to a handshake it will not take: HTTP status, body, and why (for
    its log)."""

    status: int
    body: bytes
    reason: str


def refusal(headers: Iterable[tuple[bytes, bytes]], token: str | None) -> Refusal | None:
    """None when the gateway may connect. A gateway that says no version speaks ours."""
    by_name = {name.lower(): value for name, value in headers}
    if token and not key_accepted(bearer_token(by_name.get(b"authorization")), [token]):
        return Refusal(401, b"wrong or missing worker token", "wrong or missing token")
    version = by_name.get(PROTOCOL_HEADER, _OUR_VERSION)
    if version != _OUR_VERSION:
        return Refusal(
            400,
            f"this worker speaks protocol {PROTOCOL_VERSION}".encode(),
            f"it speaks protocol {version.decode(errors='replace')}, "
            f"this worker {PROTOCOL_VERSION}",
        )
    return None
