"""Which errors count against a backend's breaker: the request's own (in-band errors, 4xx)
do not; an unreachable or broken backend does."""

from __future__ import annotations

import pytest

from trio_gateway.engines.upstream.errors import (
    connection_failed,
    inband_error,
    malformed,
    status_error,
)
from trio_gateway.errors import (
    GatewayError,
    client_cancelled,
    internal_error,
    invalid_request,
    model_not_found,
    overloaded,
    response_timeout,
    shutting_down,
    unavailable,
)

REQUESTS_OWN = {
    "in-band error, code 500": inband_error({"error": {"message": "boom", "code": 500}}),
    "in-band content filter": inband_error(
        {"error": {"message": "flagged", "type": "content_filter", "code": 400}}
    ),
    "in-band error without a code": inband_error({"message": "length"}),
    "llama.cpp in-band line": inband_error({"code": 500, "message": "ctx full"}),
    "upstream 400": status_error("u", 400, b'{"error": {"message": "bad"}}'),
    "upstream 404": status_error("u", 404, b"no such model"),
    "upstream 429": status_error("u", 429, b"slow down"),
    "no backend to route to": unavailable("No backend.", request_only=True),
    "the request's own validation": invalid_request("bad", "n"),
    "unknown model": model_not_found("m"),
    "queue full": overloaded("full"),
    "client gone": client_cancelled(),
    "shutdown": shutting_down(),
    "silence (judged by the flight)": response_timeout(5),
}

BACKEND_FAULTS = {
    "connection refused": unavailable("Could not connect.", retryable=False),
    "connection lost": connection_failed("u", "reset", retryable=False),
    "upstream 500": status_error("u", 500, b"oops"),
    "upstream 502": status_error("u", 502, b""),
    "upstream 503": status_error("u", 503, b""),
    "upstream 504": status_error("u", 504, b""),
    "upstream rejects the gateway's key": status_error("u", 401, b""),
    "unreadable answer": malformed("u", "garbage"),
    "engine failure": internal_error(),
}


@pytest.mark.parametrize("error", REQUESTS_OWN.values(), ids=REQUESTS_OWN.keys())
def test_a_requests_own_failure_is_not_a_backend_fault(error: GatewayError) -> None:
    assert error.counts_against_backend is False


@pytest.mark.parametrize("error", BACKEND_FAULTS.values(), ids=BACKEND_FAULTS.keys())
def test_an_unreachable_or_broken_backend_is_a_fault(error: GatewayError) -> None:
    assert error.counts_against_backend is True
