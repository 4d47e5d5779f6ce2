"""Upstream failures, classified rather than all called "internal".

A 4xx stays the client's error with the upstream's status and message (it must not trip the
backend's breaker on the client's mistakes); 502/503/504 and connection failures are
`unavailable` (retryable on another backend while nothing was sent); other 5xx are
`internal`; 401/403 mean the gateway's own upstream key is wrong.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson

from trio_gateway.errors import ErrorKind, GatewayError, internal_error, unavailable

log = logging.getLogger("trio_gateway.upstream")

ERROR_MESSAGE_LIMIT = 2000


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _code(value: Any) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def error_fields(body: Any) -> dict[str, Any] | None:
    """The error fields of an upstream error body, in the shapes servers actually send.

    OpenAI and current vLLM: `{"error": {...}}`; older vLLM: `{"object": "error",
    "message": ...}` at the top level; llama.cpp's in-band `error:` line: the fields bare;
    FastAPI routes: `{"detail": ...}`.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if isinstance(body.get("message"), str):
        return body
    detail = body.get("detail")
    if isinstance(detail, str):
        return {"message": detail}
    if detail is not None:
        return {"message": orjson.dumps(detail).decode()}
    return None


def truncate(text: str) -> str:
    text = text.strip()
    if len(text) > ERROR_MESSAGE_LIMIT:
        return text[:ERROR_MESSAGE_LIMIT] + "…"
    return text


def _kind_for(status: int) -> ErrorKind:
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 429:
        return ErrorKind.OVERLOAD
    if 400 <= status < 500:
        return ErrorKind.VALIDATION
    return ErrorKind.INTERNAL


def inband_error(body: Any) -> GatewayError:
    """An error inside a 200 answer (`data: {"error": {...}}`, llama.cpp's `error:` line).

    The status is the frame's numeric code when it is one (vLLM and llama.cpp send the HTTP
    status there), else 500. A 4xx code keeps the client's classification (llama.cpp reports
    an over-long prompt this way, after it has answered 200).

    Never a backend fault, whatever its code: the upstream answered, and reports that this
    request failed (a content filter, a length limit, a prompt it refused). A backend that
    is really down shows it on the next request (refused connection, 5xx status).
    """
    fields = error_fields(body) or {}
    code = _code(fields.get("code"))
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    message = _as_str(fields.get("message")) or "The upstream reported an error mid-stream."
    return GatewayError(
        _kind_for(status),
        truncate(message),
        request_only=True,
        param=_as_str(fields.get("param")),
        code=code,
        status_override=status,
        type_override=_as_str(fields.get("type")) or "internal_error",
    )


def status_error(name: str, status: int, raw: bytes) -> GatewayError:
    """The error for an upstream that answered with an error status and this body."""
    fields: dict[str, Any] | None = None
    with contextlib.suppress(orjson.JSONDecodeError):
        fields = error_fields(orjson.loads(raw))
    if fields is not None and isinstance(fields.get("message"), str):
        message = truncate(fields["message"])
    else:
        message = truncate(raw.decode("utf-8", "replace"))
    fields = fields or {}
    code = _code(fields.get("code"))
    upstream_type = _as_str(fields.get("type"))
    param = _as_str(fields.get("param"))
    message = message or f"The upstream {name} answered HTTP {status}."
    if status in (401, 403):
        # Not the client's fault: the gateway's own upstream key is wrong. Its message is
        # not quoted (it could echo the key); another backend may do better.
        log.warning("upstream %s rejected the gateway's credentials (%d)", name, status)
        return internal_error(
            f"The upstream {name} rejected the gateway's credentials (HTTP {status}).",
            retryable=True,
        )
    if status == 429:
        return GatewayError(
            ErrorKind.OVERLOAD,
            message,
            retryable=True,
            param=param,
            code=code,
            status_override=429,
            type_override=upstream_type or "overload",
        )
    if 400 <= status < 500:
        return GatewayError(
            ErrorKind.NOT_FOUND if status == 404 else ErrorKind.VALIDATION,
            message,
            param=param,
            code=code,
            status_override=status,
            type_override=upstream_type or "invalid_request_error",
        )
    if status in (502, 503, 504):
        return unavailable(
            f"The upstream {name} is unavailable (HTTP {status}): {message}", retryable=True
        )
    if status >= 500:
        return internal_error(message)
    return internal_error(f"The upstream {name} answered HTTP {status}.")


def malformed(name: str, what: str) -> GatewayError:
    return internal_error(f"The upstream {name} sent {what}.")


def connection_failed(name: str, problem: str, *, retryable: bool) -> GatewayError:
    return unavailable(
        f"The connection to the upstream {name} failed ({problem}).", retryable=retryable
    )
