"""Every request ends in one `request end` line saying what the client got; the model label
of a refused request is bounded."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig

CHAT = "/v1/chat/completions"


def end_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_gateway.requests"]


async def test_refused_requests_have_an_end_line_and_a_bounded_model_label(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway.requests")
    async with running_gateway(GatewayConfig(max_body_bytes=1024)) as harness:
        invalid = await harness.request("POST", CHAT, {"model": "mock"})  # no messages
        unknown = await harness.request("POST", CHAT, chat(model="nope"))
        other = await harness.request("POST", CHAT, chat(model="nope-2"))
        large = await harness.request("POST", CHAT, chat("x" * 2048))
        text = await harness.request(
            "POST", CHAT, body=b"hello", headers={"content-type": "text/plain"}
        )
        statuses = [r.status for r in (invalid, unknown, other, large, text)]
        registry = harness.gateway.metrics.registry
        models = {
            sample.labels["model"]
            for metric in registry.collect()
            for sample in metric.samples
            if "model" in sample.labels
        }
        by_model = {
            model: harness.metric(
                "trio_gateway_requests_total",
                model=model,
                endpoint="chat",
                request_type="unary",
                status="error",
                error_type=error_type,
            )
            for model, error_type in (("mock", "validation"), ("unknown", "not_found"))
        }
    assert statuses == [400, 404, 404, 413, 415]
    lines = end_lines(caplog)
    assert [(r.status, r.error_type, r.model) for r in lines] == [  # type: ignore[attr-defined]
        (400, "validation", "mock"),  # the body's model, served here
        (404, "not_found", "unknown"),  # a client's name is not a label value
        (404, "not_found", "unknown"),
        (413, "validation", "unknown"),  # no body parsed
        (415, "validation", "unknown"),
    ]
    assert all(r.endpoint == "chat" and r.worker is None for r in lines)  # type: ignore[attr-defined]
    assert all(r.duration_s >= 0 and r.ttft_s is None for r in lines)  # type: ignore[attr-defined]
    assert by_model == {"mock": 1, "unknown": 2}
    assert models <= {"mock", "unknown"}  # no series per name a client sent


async def test_the_end_line_says_the_status_the_client_got(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway.requests")
    async with running_gateway() as harness:
        ok = await harness.request("POST", CHAT, chat(stream=True, max_tokens=3))
        failed = await harness.request(
            "POST", CHAT, chat(stream=True, max_tokens=9, mock={"error_after": 3})
        )
        unary = await harness.request("POST", CHAT, chat(max_tokens=9, mock={"error_after": 3}))
    assert (ok.status, failed.status, unary.status) == (200, 200, 500)
    assert '"internal_error"' in failed.events()[-2]  # the stream's in-band error
    lines = end_lines(caplog)
    assert [(r.status, r.error_type) for r in lines] == [  # type: ignore[attr-defined]
        (200, "none"),
        (200, "internal"),  # the 200 went out first: what the client got
        (500, "internal"),
    ]
    assert lines[1].completion_tokens == 3  # type: ignore[attr-defined]


async def test_a_long_request_id_is_cut_to_a_valid_header_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cut at 128 characters, it would end in a space: h11 refuses that value, in the answer
    # and in the request to an upstream (a 500 there).
    sent = "a" * 127 + " " + "b" * 10
    async with running_gateway() as harness:
        response = await harness.request(
            "POST",
            "/v1/completions",
            {"model": "mock", "prompt": "hi", "max_tokens": 1},
            headers={"x-request-id": sent},
        )
        assert response.status == 200
        assert response.headers[b"x-request-id"] == b"a" * 127
