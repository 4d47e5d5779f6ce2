"""A request's failure across the plane: the worker's `GatewayError` as an `error` frame, and
the gateway's reading of it, through the real codec."""

from __future__ import annotations

import pytest

from trio_gateway.errors import ErrorKind, GatewayError, internal_error, unavailable
from trio_gateway.openai.errors import http_status, openai_type
from trio_gateway.plane.codec import decode, encode
from trio_gateway.plane.errors import error_frame, worker_error
from trio_gateway.plane.frames import ErrorFrame


def across(error: GatewayError, *, retryable: bool = False) -> GatewayError:
    """Worker side → the wire → gateway side."""
    frame = decode(encode(error_frame("r1", error)))
    assert isinstance(frame, ErrorFrame) and frame.id == "r1"
    return worker_error(frame, retryable=retryable)


@pytest.mark.parametrize(
    "error",
    [
        GatewayError(ErrorKind.VALIDATION, "bad body"),
        GatewayError(ErrorKind.NOT_FOUND, "no such model", code="model_not_found"),
        GatewayError(ErrorKind.OVERLOAD, "busy"),
        internal_error("the engine failed"),
        unavailable("the engine is down"),
    ],
    ids=lambda e: e.kind.value,
)
def test_the_client_sees_what_it_would_have_seen_from_the_worker(error: GatewayError) -> None:
    got = across(error)
    assert (http_status(got), openai_type(got), got.message) == (
        http_status(error),
        openai_type(error),
        error.message,
    )


def test_whether_it_counts_against_the_worker_crosses() -> None:
    assert across(internal_error("engine down")).counts_against_backend
    injected = internal_error("injected", request_only=True)
    assert not across(injected).counts_against_backend
    assert not across(unavailable("no session", request_only=True)).counts_against_backend


def test_retryable_is_the_gateways_call() -> None:
    # The worker cannot know whether its client already got chunks; the gateway does.
    assert across(unavailable("gone"), retryable=True).retryable
    assert not across(unavailable("gone"), retryable=False).retryable


def test_a_worker_shutting_down_is_unavailable_and_not_its_fault() -> None:
    got = across(GatewayError(ErrorKind.SHUTDOWN, "the worker shut down"))
    assert (http_status(got), openai_type(got)) == (503, "unavailable")
    assert not got.counts_against_backend
