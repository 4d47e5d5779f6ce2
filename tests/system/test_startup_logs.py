"""The logs of a gateway started for real: bare `hypercorn trio_gateway.app:app` gets the
gateway's log lines once, and the start-up line says what it serves on its real port."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import trio

from trio_gateway.cli import serve
from trio_gateway.config import GatewayConfig
from trio_gateway.http.application import create_app


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
            "serving upstream http://127.0.0.1:9/v1 (at most 256 in flight), worker ws://127.0.0.1:9",
            "mock engine",
        ),
        (
            {"workers": ("http://127.0.0.1:9/v1",), "upstream_max_inflight": 64},
            "serving upstream http://127.0.0.1:9/v1 (at most 64 in flight)",
            None,
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
