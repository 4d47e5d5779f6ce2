"""Small ASGI plumbing shared by the HTTP handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.openai.errors import encode_error, http_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = ((b"content-type", b"application/json"),)


class ClientGone(Exception):
    """The client disconnected before we finished reading its request."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of a header that may be sent several times (`tracestate`)."""
    return [bytes(value) for key, value in scope["headers"] if key.lower() == name]


def declared_length(scope: Scope) -> int | None:
    """The request's `Content-Length`, None without one (h11 refuses a malformed one before
    the app sees the request; anything else unreadable counts as none)."""
    value = header(scope, b"content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        ErrorKind.VALIDATION,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
        status_override=413,
    )


def body_read_timed_out(seconds: float) -> GatewayError:
    """408: the body did not arrive in time (the connection is closed after the answer)."""
    return GatewayError(
        ErrorKind.VALIDATION,
        f"The request body did not arrive within {seconds:g} s.",
        code="request_timeout",
        status_override=408,
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 past `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise body_too_large(limit)
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, *headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: GatewayError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_json(send, http_status(error), encode_error(error), headers)
