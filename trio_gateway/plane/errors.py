"""A request's failure across the plane: the worker sends its `GatewayError` as an `error`
frame (status, OpenAI type and code as the gateway's edge would render them), and the
gateway turns the frame back into the `GatewayError` its client gets. Both directions
live here so they stay each other's inverse."""

from __future__ import annotations

from trio_gateway.errors import ErrorKind, GatewayError, internal_error, unavailable
from trio_gateway.openai.errors import wire_fields
from trio_gateway.plane.frames import ErrorFrame


def error_frame(request_id: str, error: GatewayError) -> ErrorFrame:
    status, type_, code = wire_fields(error)
    return ErrorFrame(request_id, error.message, type_, code, status, error.counts_against_backend)


def worker_error(frame: ErrorFrame, *, retryable: bool) -> GatewayError:
    """The gateway's reading of a worker's error frame; `retryable` when the request has
    produced nothing yet."""
    if frame.status == 503 or frame.type == "unavailable":
        return unavailable(frame.message, retryable=retryable, request_only=not frame.backend_fault)
    if 400 <= frame.status < 500:
        return GatewayError(
            ErrorKind.VALIDATION,
            frame.message,
            code=frame.code,
            status_override=frame.status,
            type_override=frame.type,
        )
    if frame.type == "shutdown":
        return GatewayError(
            ErrorKind.UNAVAILABLE,
            frame.message,
            request_only=True,
            code=frame.code,
            status_override=503,
            type_override="unavailable",
        )
    return internal_error(frame.message, request_only=not frame.backend_fault)
