"""The domain error and its one rendering at the edge."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from trio_gateway.engines.upstream.errors import inband_error, status_error
from trio_gateway.errors import (
    ErrorKind,
    GatewayError,
    client_cancelled,
    draining,
    internal_error,
    invalid_api_key,
    invalid_request,
    model_not_found,
    overloaded,
    response_timeout,
    route_not_found,
    session_lost,
    shutting_down,
    unavailable,
)
from trio_gateway.openai.errors import ERROR_TYPES, error_body, http_status, wire_fields


@contextlib.contextmanager
def passing_through() -> Iterator[None]:
    yield


@contextlib.contextmanager
def cleaning_up(log: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        log.append("cleaned")


def test_a_gateway_error_crosses_a_contextmanager_as_itself() -> None:
    """contextlib sets `__traceback__` on what it rethrows: a frozen dataclass exception
    came out of a `@contextmanager` as `FrozenInstanceError`, an internal error."""
    log: list[str] = []
    with pytest.raises(GatewayError) as caught, passing_through(), cleaning_up(log):
        raise overloaded("full")
    assert type(caught.value) is GatewayError
    assert caught.value.kind is ErrorKind.OVERLOAD
    assert caught.value.message == "full"
    assert log == ["cleaned"]


def test_a_gateway_error_raised_inside_a_contextmanager_keeps_its_kind() -> None:
    @contextlib.contextmanager
    def refusing() -> Iterator[None]:
        raise unavailable("gone", retryable=True)
        yield  # pragma: no cover

    with pytest.raises(GatewayError) as caught, refusing():
        pass
    assert (caught.value.kind, caught.value.retryable) == (ErrorKind.UNAVAILABLE, True)


def test_the_kinds_are_the_metric_labels() -> None:
    assert ERROR_TYPES == (
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


# Each constructor's status, OpenAI type, param, code and error_type label, as the HTTP
# answers, the SSE error event and the worker's error frame showed them before the domain
# error (when each was an `APIError` carrying its own status).
RENDERED = {
    "invalid_request": (
        invalid_request("bad", "n", "c"),
        (400, "invalid_request_error", "n", "c", "validation"),
    ),
    "invalid_request, no code": (
        invalid_request("bad"),
        (400, "invalid_request_error", None, None, "validation"),
    ),
    "model_not_found": (
        model_not_found("m"),
        (404, "invalid_request_error", "model", "model_not_found", "not_found"),
    ),
    "route_not_found": (
        route_not_found("GET", "/x"),
        (404, "invalid_request_error", None, None, "not_found"),
    ),
    "response_timeout": (
        response_timeout(3),
        (504, "response_timeout", None, "response_timeout", "response_timeout"),
    ),
    "shutting_down": (shutting_down(), (503, "shutdown", None, "shutdown", "shutdown")),
    "draining": (draining(), (503, "unavailable", None, "draining", "unavailable")),
    "invalid_api_key": (
        invalid_api_key(),
        (401, "invalid_request_error", None, "invalid_api_key", "unauthorized"),
    ),
    "client_cancelled": (client_cancelled(), (499, "cancelled", None, "cancelled", "cancelled")),
    "unavailable": (unavailable("x"), (503, "unavailable", None, "unavailable", "unavailable")),
    "session_lost": (
        session_lost("s", "w"),
        (503, "session_lost", "session_id", "session_lost", "unavailable"),
    ),
    "overloaded": (overloaded("x"), (429, "overload", None, "overload", "overload")),
    "internal_error": (
        internal_error(),
        (500, "internal_error", None, "internal_error", "internal"),
    ),
    "upstream 4xx keeps its own status, type and code": (
        status_error("u", 422, b'{"error": {"message": "no", "type": "BadRequestError"}}'),
        (422, "BadRequestError", None, None, "validation"),
    ),
    "upstream 429 without a code keeps none": (
        status_error("u", 429, b"slow down"),
        (429, "overload", None, None, "overload"),
    ),
    "in-band 503 is internal with its status": (
        inband_error({"error": {"message": "busy", "code": 503}}),
        (503, "internal_error", None, 503, "internal"),
    ),
}


@pytest.mark.parametrize(("error", "expected"), RENDERED.values(), ids=RENDERED.keys())
def test_rendered_at_the_edge_as_before(
    error: GatewayError, expected: tuple[int, str, str | None, str | int | None, str]
) -> None:
    body = error_body(error)["error"]
    assert body["message"] == error.message
    rendered = (http_status(error), body["type"], body["param"], body["code"], error.kind.value)
    assert rendered == expected
    assert wire_fields(error) == (expected[0], expected[1], expected[3])
