"""OpenAI-shaped errors, and the one taxonomy of how a request can end (docs/architecture.md
§1.8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# The error_type label values a request can end with; "none" is success.
ERROR_TYPES = (
    "none",
    "validation",
    "not_found",
    "overload",
    "cancelled",
    "response_timeout",
    "internal",
    "unavailable",
    "shutdown",
    "unauthorized",
)


@dataclass(frozen=True)  # no slots: contextlib sets __traceback__ on exceptions it rethrows
class APIError(Exception):
    """An error the client sees as `{"error": {...}}` with an HTTP status.

    `error_type` is our metrics classification; `type` is what OpenAI clients read.

    `backend_fault` says whether the failure is evidence that the backend itself is down or
    broken, so that it counts against the backend's circuit breaker. It is set where the
    error is made, by what the error says, not derived from its status: True for a backend
    that cannot be reached or answers as broken (connection refused or lost, a worker lost,
    an upstream's 5xx status, 401/403 on the gateway's own key, an answer that cannot be
    read); False for a request's own failure, which says nothing about the next request (a
    4xx or 429, an error reported in-band by an engine that is otherwise answering, such as
    a content filter, a length limit or the mock's injected `error_after`). An engine that
    stays silent is judged by the flight (`_generate_on`), not by an error.
    """

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | int | None = None
    error_type: str = "validation"
    # True when the engine produced nothing before failing (a worker lost or refusing
    # before the first chunk): the request may be tried again on another engine.
    retryable: bool = False
    # Counts against the backend's circuit breaker (see above); the constructors for the
    # backend's own failures, `unavailable` and `internal_error`, default to True.
    backend_fault: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.body())

    def stream_frame_body(self) -> dict[str, Any]:
        """The in-band error of a stream that already started: message, type, code."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code, "validation")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model",
        "model_not_found",
        "not_found",
    )


def route_not_found(method: str, path: str) -> APIError:
    return APIError(
        404, f"Unknown route: {method} {path}", "invalid_request_error", None, None, "not_found"
    )


def response_timeout(seconds: float) -> APIError:
    return APIError(
        504,
        f"The engine produced no output for {seconds:g} s; the request was cancelled.",
        "response_timeout",
        None,
        "response_timeout",
        "response_timeout",
    )


def shutting_down() -> APIError:
    return APIError(503, "The gateway is shutting down.", "shutdown", None, "shutdown", "shutdown")


def draining() -> APIError:
    return APIError(
        503,
        "The gateway is shutting down and takes no new requests; retry on another instance.",
        "unavailable",
        None,
        "draining",
        "unavailable",
    )


def invalid_api_key() -> APIError:
    # Never echo the key back: it would end up in client logs and proxies.
    return APIError(
        401,
        "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
        "invalid_request_error",
        None,
        "invalid_api_key",
        "unauthorized",
    )


def client_cancelled() -> APIError:
    # Status 499 (nginx's "client closed request"): nobody reads it, metrics and logs do.
    return APIError(499, "The client disconnected.", "cancelled", None, "cancelled", "cancelled")


def unavailable(message: str, *, retryable: bool = False, backend_fault: bool = True) -> APIError:
    return APIError(
        503, message, "unavailable", None, "unavailable", "unavailable", retryable, backend_fault
    )


def session_lost(session_id: str, worker: str) -> APIError:
    return APIError(
        503,
        f"Session {session_id!r} lived on worker {worker}, which is gone; start a new session.",
        "session_lost",
        "session_id",
        "session_lost",
        "unavailable",
    )


def overloaded(message: str) -> APIError:
    return APIError(429, message, "overload", None, "overload", "overload")


def internal_error(message: str = "The engine failed.", *, backend_fault: bool = True) -> APIError:
    return APIError(
        500, message, "internal_error", None, "internal_error", "internal", False, backend_fault
    )
