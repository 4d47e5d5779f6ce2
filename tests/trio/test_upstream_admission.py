"""Admission in front of an OpenAI-compatible upstream, through the ASGI app on MockClock.

The engine is the real `OpenAIUpstream` as the router sees it (its capacity, name and
availability), with the socket replaced by the test's hand: each request sends one token
and then holds until the test lets one finish. What is checked is the gateway's side: the
upstream never holds more than its capacity, the rest waits in the gateway's queue (and in
`trio_gateway_queued_requests`), and past the queue's size or timeout the client gets 429
with `Retry-After`.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from tests.support.asgi_client import Exchange, Harness, running_gateway
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.generation import Chunk, GenerationRequest

CHAT = "/v1/chat/completions"
MODEL = "up"
TOKEN = b'data: {"choices": [{"index": 0, "delta": {"content": "t "}}]}\n\n'


class HeldUpstream(OpenAIUpstream):
    """Counts the requests it holds at once; `finish_one` lets one of them end."""

    def __init__(self, **options: Any) -> None:
        super().__init__("http://upstream.test:8000/v1", models=(MODEL,), **options)
        self.holding = 0
        self.most = 0
        self.seen = 0
        self._finish = trio.Semaphore(0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.available = True
        task_status.started()
        await trio.sleep_forever()

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        self.seen += 1
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await send.send(Chunk(text="t ", payload=TOKEN))
            await self._finish.acquire()
            await send.send(Chunk(tokens=0, finish_reason="stop"))
        finally:
            self.holding -= 1

    def finish_one(self) -> None:
        self._finish.release()


def settings(**overrides: Any) -> GatewayConfig:
    # No inactivity timeout: the held requests are silent for as long as the test wants.
    return GatewayConfig(inactivity_timeout_s=0, **overrides)


def ask(harness: Harness) -> Exchange:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return harness.start("POST", CHAT, body)


def queued(harness: Harness) -> float:
    return harness.metric("trio_gateway_queued_requests", model=MODEL)


async def test_an_upstream_takes_256_at_once_by_default_and_the_next_waits_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = HeldUpstream()
    async with running_gateway(settings(), engines=[upstream]) as harness:
        running = [ask(harness) for _ in range(256)]
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.holding == 256
        assert queued(harness) == 0  # each has its first token: none is waiting
        late = ask(harness)
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.seen == 256  # the 257th did not reach the upstream
        assert harness.gateway.router.queued == 1
        assert queued(harness) == 1
        assert late.status is None

        upstream.finish_one()
        with trio.fail_after(1):
            await late.wait_until(lambda e: bool(e.tokens()))
        assert late.status == 200
        assert upstream.seen == 257
        assert harness.gateway.router.queued == 0
        assert queued(harness) == 0
        for _ in range(256):
            upstream.finish_one()
        with trio.fail_after(1):
            for exchange in [*running, late]:
                await exchange.finished.wait()
    assert upstream.most == 256
    assert [e.status for e in running] == [200] * 256
    assert all(e.events()[-1] == "[DONE]" for e in [*running, late])


async def test_past_a_full_queue_the_client_gets_429_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = HeldUpstream(max_inflight=2)
    async with running_gateway(settings(queue_size=2), engines=[upstream]) as harness:
        admitted = [ask(harness) for _ in range(4)]  # two run, two wait
        await trio.testing.wait_all_tasks_blocked()
        assert (upstream.holding, harness.gateway.router.queued) == (2, 2)
        assert queued(harness) == 2
        started = trio.current_time()
        refused = await harness.request(
            "POST",
            CHAT,
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert trio.current_time() == started  # at once, not after the queue's timeout
        assert refused.status == 429
        assert refused.headers[b"retry-after"] == b"5"
        assert refused.json()["error"]["type"] == "overload"
        assert "queue is full" in refused.json()["error"]["message"]
        for _ in range(4):
            upstream.finish_one()
        with trio.fail_after(1):
            for exchange in admitted:
                await exchange.finished.wait()
    assert [e.status for e in admitted] == [200] * 4
    assert (upstream.most, upstream.seen) == (2, 4)


async def test_a_request_queued_past_the_timeout_gets_429_and_leaves_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = HeldUpstream(max_inflight=1)
    config = settings(queue_timeout_s=7.5)
    async with running_gateway(config, engines=[upstream]) as harness:
        holder = ask(harness)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        waiting = ask(harness)
        await trio.testing.wait_all_tasks_blocked()
        assert queued(harness) == 1
        with trio.fail_after(60):
            await waiting.finished.wait()
        assert trio.current_time() - started == 7.5
        assert waiting.status == 429
        assert waiting.headers[b"retry-after"] == b"5"
        assert waiting.json()["error"]["message"] == "No capacity within 7.5 s. Retry later."
        assert harness.gateway.router.queued == 0
        assert queued(harness) == 0
        assert upstream.seen == 1
        upstream.finish_one()
        with trio.fail_after(1):
            await holder.finished.wait()
    assert holder.status == 200


async def test_a_queued_client_that_leaves_is_gone_from_the_queue_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = HeldUpstream(max_inflight=1)
    async with running_gateway(settings(), engines=[upstream]) as harness:
        holder = ask(harness)
        await trio.testing.wait_all_tasks_blocked()
        leaving, staying = ask(harness), ask(harness)
        await trio.testing.wait_all_tasks_blocked()
        assert harness.gateway.router.queued == 2
        started = trio.current_time()
        leaving.disconnect()
        with trio.fail_after(1):
            await leaving.finished.wait()
        assert trio.current_time() == started
        assert harness.gateway.router.queued == 1
        assert queued(harness) == 1
        assert harness.metric("trio_gateway_cancellations_total", reason="client_disconnected") == 1

        upstream.finish_one()  # the slot goes to the one still waiting, not the one that left
        with trio.fail_after(1):
            await staying.wait_until(lambda e: bool(e.tokens()))
        assert (upstream.seen, upstream.holding) == (2, 1)
        upstream.finish_one()
        with trio.fail_after(1):
            await staying.finished.wait()
    assert leaving.status is None
    assert (holder.status, staying.status) == (200, 200)
