"""How a request can fail, in the gateway's own terms: a kind, a message, whether to retry.

Engines, the router, sessions, the flight and the worker raise `GatewayError`; none of them
knows HTTP. The edge (`openai/errors.py`) turns a kind into a status code and an OpenAI
error body, in one table. The kinds are the `error_type` label values of the request
metrics and of the request log line, so both read as they did before.

`GatewayError` is a plain exception on purpose: a frozen dataclass exception cannot pass
through a `@contextlib.contextmanager` (contextlib sets `__traceback__` on what it
rethrows, the frozen `__setattr__` refuses, and the caller gets `FrozenInstanceError`
instead of the error that was raised).
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """Why a request ended without an answer; the value is the metrics label."""

    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    OVERLOAD = "overload"
    CANCELLED = "cancelled"
    RESPONSE_TIMEOUT = "response_timeout"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    SHUTDOWN = "shutdown"
    UNAUTHORIZED = "unauthorized"

    @property
    def may_blame_backend(self) -> bool:
        """A backend that cannot be reached or answers as broken fails this way; every
        other kind is the request's, the client's or the gateway's own doing. An engine's
        silence (`response_timeout`) is judged by the flight, which knows how long the
        engine held the request."""
        return self in (ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL)

    @property
    def is_client_error(self) -> bool:
        """Answered with a 4xx: a failure the request would meet on any backend (or a
        "retry later"), passed on as it is rather than blamed on the backend."""
        return self in _CLIENT_ERRORS


_CLIENT_ERRORS = frozenset(
    {
        ErrorKind.VALIDATION,
        ErrorKind.NOT_FOUND,
        ErrorKind.OVERLOAD,
        ErrorKind.CANCELLED,
        ErrorKind.UNAUTHORIZED,
    }
)


class GatewayError(Exception):
    """A request's failure, raised below the HTTP layer and rendered at its edge.

    `retryable`: the engine produced nothing before failing (a worker lost or refusing
    before the first chunk, an upstream's 502/503/504), so another backend may be tried.

    `request_only`: the failure says nothing about the backend's health although its kind
    could (`ErrorKind.may_blame_backend`). The kind alone cannot tell, because the same
    kind comes from both: `internal` is an upstream's 500 status (the backend is broken)
    and also an error the engine reports in-band in an answer that is otherwise going well
    (a content filter, a length limit, the mock's injected `error_after`: this request
    failed, the next one may not); `unavailable` is a refused connection and also the
    router finding no backend at all. `counts_against_backend` combines the two.

    `param` and `code` are the OpenAI error fields; `code` None takes the kind's default
    code at the edge. The overrides are set only for an error whose HTTP status and OpenAI
    type are not its kind's: an upstream's own 4xx (or a worker's error frame) is passed
    on with its status, type and message, and the HTTP layer refuses some requests with
    statuses of its own (413, 408). With `status_override` set, `code` is rendered as
    given, None included: a relayed answer is passed on as it was. `type_override` alone
    names a more precise OpenAI type for the kind's status, as `session_lost` does.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retryable: bool = False,
        request_only: bool = False,
        param: str | None = None,
        code: str | int | None = None,
        status_override: int | None = None,
        type_override: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.request_only = request_only
        self.param = param
        self.code = code
        self.status_override = status_override
        self.type_override = type_override

    @property
    def counts_against_backend(self) -> bool:
        """Evidence that the backend is down or broken, for its circuit breaker."""
        return self.kind.may_blame_backend and not self.request_only

    def __repr__(self) -> str:
        return f"GatewayError({self.kind.value}, {self.message!r})"


def invalid_request(
    message: str, param: str | None = None, code: str | None = None
) -> GatewayError:
    return GatewayError(ErrorKind.VALIDATION, message, param=param, code=code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        ErrorKind.NOT_FOUND,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def route_not_found(method: str, path: str) -> GatewayError:
    return GatewayError(ErrorKind.NOT_FOUND, f"Unknown route: {method} {path}")


def response_timeout(seconds: float) -> GatewayError:
    return GatewayError(
        ErrorKind.RESPONSE_TIMEOUT,
        f"The engine produced no output for {seconds:g} s; the request was cancelled.",
    )


def shutting_down() -> GatewayError:
    return GatewayError(ErrorKind.SHUTDOWN, "The gateway is shutting down.")


def draining() -> GatewayError:
    return GatewayError(
        ErrorKind.UNAVAILABLE,
        "The gateway is shutting down and takes no new requests; retry on another instance.",
        request_only=True,
        code="draining",
    )


def invalid_api_key() -> GatewayError:
    # Never echo the key back: it would end up in client logs and proxies.
    return GatewayError(
        ErrorKind.UNAUTHORIZED,
        "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
    )


def client_cancelled() -> GatewayError:
    return GatewayError(ErrorKind.CANCELLED, "The client disconnected.")


def unavailable(
    message: str, *, retryable: bool = False, request_only: bool = False
) -> GatewayError:
    return GatewayError(
        ErrorKind.UNAVAILABLE, message, retryable=retryable, request_only=request_only
    )


def session_lost(session_id: str, worker: str) -> GatewayError:
    return GatewayError(
        ErrorKind.UNAVAILABLE,
        f"Session {session_id!r} lived on worker {worker}, which is gone; start a new session.",
        request_only=True,
        param="session_id",
        code="session_lost",
        type_override="session_lost",
    )


def overloaded(message: str) -> GatewayError:
    return GatewayError(ErrorKind.OVERLOAD, message)


def internal_error(
    message: str = "The engine failed.", *, retryable: bool = False, request_only: bool = False
) -> GatewayError:
    return GatewayError(ErrorKind.INTERNAL, message, retryable=retryable, request_only=request_only)
