"""Errors on the OpenAI wire: a `GatewayError`'s HTTP status and `{"error": {...}}` body.

This is the one place a kind of failure becomes a status code, an OpenAI `type` and a
default `code`; the HTTP answers, the SSE error event, the control routes and the worker
plane's error frame all render through it (docs/architecture.md §1.8).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from trio_gateway.errors import ErrorKind, GatewayError

# The error_type label values a request can end with; "none" is success.
ERROR_TYPES = ("none", *(kind.value for kind in ErrorKind))


class WireShape(NamedTuple):
    status: int
    type: str
    code: str | None


WIRE_SHAPES: dict[ErrorKind, WireShape] = {
    ErrorKind.VALIDATION: WireShape(400, "invalid_request_error", None),
    ErrorKind.NOT_FOUND: WireShape(404, "invalid_request_error", None),
    ErrorKind.OVERLOAD: WireShape(429, "overload", "overload"),
    # 499 (nginx's "client closed request"): nobody reads it, metrics and logs do.
    ErrorKind.CANCELLED: WireShape(499, "cancelled", "cancelled"),
    ErrorKind.RESPONSE_TIMEOUT: WireShape(504, "response_timeout", "response_timeout"),
    ErrorKind.INTERNAL: WireShape(500, "internal_error", "internal_error"),
    ErrorKind.UNAVAILABLE: WireShape(503, "unavailable", "unavailable"),
    ErrorKind.SHUTDOWN: WireShape(503, "shutdown", "shutdown"),
    ErrorKind.UNAUTHORIZED: WireShape(401, "invalid_request_error", "invalid_api_key"),
}


def http_status(error: GatewayError) -> int:
    if error.status_override is not None:
        return error.status_override
    return WIRE_SHAPES[error.kind].status


def openai_type(error: GatewayError) -> str:
    if error.type_override is not None:
        return error.type_override
    return WIRE_SHAPES[error.kind].type


def _type_and_code(error: GatewayError) -> tuple[str, str | int | None]:
    type_ = openai_type(error)
    if error.status_override is not None or error.code is not None:  # as given (or relayed)
        return type_, error.code
    return type_, WIRE_SHAPES[error.kind].code


def error_body(error: GatewayError) -> dict[str, Any]:
    type_, code = _type_and_code(error)
    return {"error": {"message": error.message, "type": type_, "param": error.param, "code": code}}


def encode_error(error: GatewayError) -> bytes:
    return orjson.dumps(error_body(error))


def stream_error_body(error: GatewayError) -> dict[str, Any]:
    """The in-band error of a stream that already started: message, type, code."""
    type_, code = _type_and_code(error)
    return {"error": {"message": error.message, "type": type_, "code": code}}


def wire_fields(error: GatewayError) -> tuple[int, str, str | int | None]:
    """Status, OpenAI type and code: what the worker plane's error frame carries."""
    type_, code = _type_and_code(error)
    return http_status(error), type_, code
