"""Every request ends in one `request end` line saying what the client got; the model label
of a refused request is bounded; bare hypercorn logs; the start-up line says what it serves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from trio_gateway.cli import serve
from trio_gateway.config import GatewayConfig
from trio_gateway.http.application import create_app

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


def test_bare_hypercorn_gets_the_gateways_logs_once() -> None:
    """`hypercorn trio_gateway.app:app` imports the module, then sets up its own error log
    (a handler of its own on `hypercorn.error`); nothing else configures logging."""
    script = textwrap.dedent(
        """
        import logging, sys
        import trio_gateway.app
        from hypercorn.config import Config

        Config().log  # hypercorn's own loggers, as its worker makes them
        logging.getLogger("trio_gateway.requests").info("request end", extra={"status": 404})
        logging.getLogger("trio_gateway").debug("not at info")
        logging.getLogger("hypercorn.error").info("Running on http://x")
        import trio_gateway.engines.upstream.engine
        print("httpx" in sys.modules)
        """
    )
    env = {
        **os.environ,
        "TRIO_GATEWAY_LOG_FORMAT": "json",
        "TRIO_GATEWAY_LOG_LEVEL": "info",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # no httpx left to log a line per request
    lines = done.stderr.splitlines()
    ends = [json.loads(line) for line in lines if '"request end"' in line]
    assert [(end["logger"], end["status"]) for end in ends] == [("trio_gateway.requests", 404)]
    assert sum("Running on http://x" in line for line in lines) == 1  # hypercorn's, once
    assert "not at info" not in done.stderr


@pytest.mark.parametrize(
    ("settings", "said", "unsaid"),
    [
        ({}, "serving mock (mock engine: ttft 5 ms, step 10 ms, 256 seqs)", None),
        (
            {"mock_prefill_ms_per_1k_tokens": 20.0},
            "serving mock (mock engine: ttft 5 ms, step 10 ms, 256 seqs, prefill 20 ms per 1k "
            "uncached tokens, prefix cache 8192 blocks of 16 tokens)",
            None,
        ),
        (
            {"workers": ("http://127.0.0.1:9/v1", "ws://127.0.0.1:9")},
            "serving upstream http://127.0.0.1:9/v1, worker ws://127.0.0.1:9",
            "mock engine",
        ),
    ],
)
async def test_the_startup_line_says_what_it_serves(
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, object],
    said: str,
    unsaid: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway")
    config = GatewayConfig(port=0, **settings)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, create_app(config), config)
            nursery.cancel_scope.cancel()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("serving"))
    assert line == said
    assert unsaid is None or unsaid not in line
