"""Request ids end to end, and the end-of-request log line (JSON and text)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat
from tests.support.recording_engine import RecordingEngine
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.logs import request_id_var

CHAT = "/v1/chat/completions"


class IdSpy(RecordingEngine):
    """Notes the request id its engine task sees in the logging context."""

    seen: list[str | None]

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        self.seen.append(request_id_var.get())
        await super().generate(request, send)


async def test_the_request_id_reaches_the_engine_task_and_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spy = IdSpy(MockEngine())
    spy.seen = []
    async with running_gateway(engines=[spy]) as harness:
        given = await harness.request(
            "POST", CHAT, chat(max_tokens=1), headers={"x-request-id": "abc-123"}
        )
        made = await harness.request("POST", CHAT, chat(max_tokens=1))
        probe = await harness.request("GET", "/health", headers={"x-request-id": "h-1"})
    assert given.headers[b"x-request-id"] == b"abc-123"
    assert spy.seen[0] == "abc-123"
    assert spy.seen[1] == made.headers[b"x-request-id"].decode()
    assert probe.headers[b"x-request-id"] == b"h-1"


async def test_the_request_id_travels_to_the_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1") as server:
        seen: list[str] = []
        engine = server.engine
        original = engine.generate

        async def spying(request: GenerationRequest, send: trio.MemorySendChannel[Chunk]) -> None:
            seen.append(request.trace_id)
            await original(request, send)

        engine.generate = spying  # type: ignore[method-assign]
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(engines=[worker]) as harness:
            await worker.wait_connected()
            await harness.request(
                "POST", CHAT, chat(max_tokens=1), headers={"x-request-id": "trace-9"}
            )
    assert seen == ["trace-9"]


async def test_one_end_line_per_request_without_text(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway.requests")
    async with running_gateway() as harness:
        await harness.request("POST", CHAT, chat("secret prompt", stream=True, max_tokens=3))
        await harness.request("POST", CHAT, {"model": "nope"})  # refused before any flight
    ends = [r for r in caplog.records if r.name == "trio_gateway.requests"]
    assert len(ends) == 2
    end, refused = ends
    assert (end.model, end.endpoint, end.worker, end.status, end.error_type) == (  # type: ignore[attr-defined]
        "mock",
        "chat",
        "mock",
        200,
        "none",
    )
    refused_as = (refused.model, refused.status, refused.error_type)  # type: ignore[attr-defined]
    assert refused_as == ("unknown", 400, "validation")  # no messages; "nope" is not served
    assert end.completion_tokens == 3  # type: ignore[attr-defined]
    assert end.ttft_s > 0 and end.duration_s >= end.ttft_s  # type: ignore[attr-defined]
    assert not hasattr(end, "prompt") and not hasattr(end, "completion")
    assert "secret prompt" not in caplog.text


async def test_log_prompts_adds_the_text(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_gateway.requests")
    async with running_gateway(GatewayConfig(log_prompts=True)) as harness:
        response = await harness.request("POST", CHAT, chat("tell me", max_tokens=2))
    end = next(r for r in caplog.records if r.name == "trio_gateway.requests")
    assert "tell me" in end.prompt  # type: ignore[attr-defined]
    assert end.completion == response.json()["choices"][0]["message"]["content"]  # type: ignore[attr-defined]
