"""Per-backend metrics through the whole gateway: two replicas of one model, on MockClock.

What an operator reads to find the replica that is slow or failing: requests and errors,
TTFT, ITL and in-flight by `backend`, labelled by the configured URL (never the id a worker
says in its hello), nothing for a request that never reached a backend, and no series left
behind by a backend that was removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig
from trio_gateway.errors import GatewayError, unavailable
from trio_gateway.generation import Chunk, GenerationRequest

CHAT = "/v1/chat/completions"
FAST = "http://fast.replica:8000/v1"
SLOW = "http://slow.replica:8000/v1"


def token(text: str, finish_reason: str | None = None) -> Chunk:
    event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}]}
    return Chunk(text, 1, finish_reason, payload=b"data: " + orjson.dumps(event) + b"\n\n")


@dataclass(eq=False)
class Replica:
    """A backend serving "mock" at `url`: first token after `ttft`, then one every `gap`.

    `fail` is raised after `fail_after` tokens; `hold` keeps each request open after its
    first token until the replica's background work stops (the gateway removed it), which
    ends it as a lost worker's request ends."""

    url: str
    name: str  # what a worker's hello would call it: not the label
    ttft: float = 0.01
    gap: float = 0.01
    tokens: int = 4
    fail: GatewayError | None = None
    fail_after: int = 0
    hold: bool = False
    models: tuple[str, ...] = ("mock",)
    capacity: int | None = None
    available: bool = True
    streams_unary: bool = True
    context_lengths: Mapping[str, int] = field(default_factory=dict)
    stopped: trio.Event = field(default_factory=trio.Event)
    calls: int = 0
    on_available: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.stopped.set()

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        self.calls += 1
        await trio.sleep(self.ttft)
        for index in range(self.tokens):
            if self.fail is not None and index == self.fail_after:
                raise self.fail
            await send.send(token("x"))
            if self.hold:
                await self.stopped.wait()
                raise unavailable(f"The worker {self.name} was removed.")
            await trio.sleep(self.gap)
        await send.send(token("", "stop"))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(harness: Harness) -> Samples:
    answer = await harness.request("GET", "/metrics")
    assert answer.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(bytes(answer.body).decode())
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    return scraped.get(("trio_gateway_" + name, frozenset(labels.items())))


def backends_in(scraped: Samples, name: str) -> set[str]:
    return {
        dict(labels)["backend"]
        for sample, labels in scraped
        if sample == "trio_gateway_" + name and "backend" in dict(labels)
    }


def round_robin() -> GatewayConfig:
    return GatewayConfig(routing_policy="round_robin")


async def test_the_per_backend_series_tell_the_slow_replica_from_the_fast_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fast = Replica(FAST, "worker-a1b2", ttft=0.01, gap=0.01)
    slow = Replica(SLOW, "worker-c3d4", ttft=0.5, gap=0.2)
    async with running_gateway(round_robin(), [fast, slow]) as harness:
        for _ in range(4):
            answer = await harness.request("POST", CHAT, chat(stream=True))
            assert answer.status == 200 and len(answer.tokens()) == 4
        scraped = await scrape(harness)
    assert fast.calls == slow.calls == 2
    for url in (FAST, SLOW):
        ok = {"backend": url, "model": "mock", "status": "success", "error_type": "none"}
        assert value(scraped, "backend_requests_total", **ok) == 2
    assert backends_in(scraped, "backend_requests_total") == {FAST, SLOW}  # not the hello ids

    def ttft(url: str, suffix: str, **extra: str) -> float | None:
        name = "backend_time_to_first_token_seconds" + suffix
        return value(scraped, name, backend=url, model="mock", **extra)

    # From the dispatch, so the same on a mock clock for every request of a replica.
    assert ttft(FAST, "_count") == ttft(SLOW, "_count") == 2
    assert abs((ttft(FAST, "_sum") or 0) - 2 * 0.01) < 1e-6
    assert abs((ttft(SLOW, "_sum") or 0) - 2 * 0.5) < 1e-6
    assert ttft(FAST, "_bucket", le="0.025") == 2 and ttft(SLOW, "_bucket", le="0.25") == 0

    def itl(url: str, le: str) -> float | None:
        labels = {"backend": url, "model": "mock", "le": le}
        return value(scraped, "backend_inter_token_latency_seconds_bucket", **labels)

    # One write per token here (they come apart): after the first, 3 tokens and the finish,
    # each `gap` after the last, per request.
    assert itl(FAST, "0.0125") == itl(FAST, "+Inf") == 8
    assert itl(SLOW, "0.1") == 0 and itl(SLOW, "0.25") == 8
    # The families the dashboards already read keep their labels and their totals.
    gateway_ok = {"endpoint": "chat", "request_type": "stream", "status": "success"}
    assert value(scraped, "requests_total", model="mock", **gateway_ok, error_type="none") == 4


async def test_a_failing_replica_shows_its_errors_by_type_and_the_healthy_one_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    good = Replica(FAST, "worker-a1b2")
    bad = Replica(SLOW, "worker-c3d4", fail=unavailable("The upstream answered 502."))
    async with running_gateway(round_robin(), [good, bad]) as harness:
        statuses = [(await harness.request("POST", CHAT, chat())).status for _ in range(4)]
        scraped = await scrape(harness)
    assert sorted(statuses, key=str) == [200, 200, 503, 503]
    failed = {"backend": SLOW, "model": "mock", "status": "error", "error_type": "unavailable"}
    assert value(scraped, "backend_requests_total", **failed) == 2
    assert value(scraped, "backend_requests_total", **failed | {"backend": FAST}) is None
    ok = {"backend": FAST, "model": "mock", "status": "success", "error_type": "none"}
    assert value(scraped, "backend_requests_total", **ok) == 2
    assert value(scraped, "backend_requests_total", **ok | {"backend": SLOW}) is None


async def test_a_request_retried_elsewhere_counts_where_it_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refused = unavailable("Connection refused.", retryable=True)
    down = Replica(SLOW, "worker-c3d4", fail=refused)
    up = Replica(FAST, "worker-a1b2")
    async with running_gateway(round_robin(), [down, up]) as harness:
        for _ in range(2):
            assert (await harness.request("POST", CHAT, chat(stream=True))).status == 200
        scraped = await scrape(harness)
    assert down.calls >= 1  # tried first at least once, then retried on `up`
    ok = {"backend": FAST, "model": "mock", "status": "success", "error_type": "none"}
    assert value(scraped, "backend_requests_total", **ok) == 2
    assert backends_in(scraped, "backend_requests_total") == {FAST}
    assert backends_in(scraped, "backend_time_to_first_token_seconds_count") == {FAST}


async def test_requests_that_never_reached_a_backend_have_no_backend_series(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(round_robin(), [Replica(FAST, "worker-a1b2")]) as harness:
        assert (await harness.request("POST", CHAT, chat(model="nope"))).status == 404
        assert (await harness.request("POST", CHAT, chat(max_tokens=-1))).status == 400
        assert (await harness.request("POST", CHAT, body=b"{")).status == 400
        scraped = await scrape(harness)
    refused = {"endpoint": "chat", "request_type": "unary", "status": "error"}
    assert value(scraped, "requests_total", model="unknown", **refused, error_type="not_found")
    assert backends_in(scraped, "backend_requests_total") == set()
    assert value(scraped, "backend_inflight_requests", backend=FAST) == 0


async def test_in_flight_by_backend_and_a_removed_backend_leaves_no_series(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held = Replica(SLOW, "worker-c3d4", hold=True)
    other = Replica(FAST, "worker-a1b2")
    async with running_gateway(round_robin(), [held, other]) as harness:
        streams = [harness.start("POST", CHAT, chat(stream=True)) for _ in range(4)]
        for exchange in streams:
            await exchange.wait_until(lambda e: e.status is not None)
        await trio.sleep(1.0)  # `other`'s two are done by now; `held`'s wait for removal
        assert sum(exchange.finished.is_set() for exchange in streams) == 2
        scraped = await scrape(harness)
        assert value(scraped, "backend_inflight_requests", backend=SLOW) == 2
        assert value(scraped, "backend_inflight_requests", backend=FAST) == 0

        assert harness.gateway.fleet.remove_engine(held.name)
        for exchange in streams:
            await exchange.finished.wait()
        scraped = await scrape(harness)
        assert backends_in(scraped, "backend_inflight_requests") == {FAST}
        assert backends_in(scraped, "backend_up") == {FAST}
        # Its requests ended where they were, as errors of the removed backend.
        lost = {"backend": SLOW, "model": "mock", "status": "error", "error_type": "unavailable"}
        assert value(scraped, "backend_requests_total", **lost) == 2

        # Back under the same URL (a restarted worker says another id): the same label.
        back = Replica(SLOW, "worker-e5f6", hold=False)
        await harness.gateway.fleet.add_engine(back)
        for _ in range(2):
            assert (await harness.request("POST", CHAT, chat(stream=True))).status == 200
        scraped = await scrape(harness)
    assert back.calls == 1
    assert backends_in(scraped, "backend_inflight_requests") == {FAST, SLOW}
    assert value(scraped, "backend_inflight_requests", backend=SLOW) == 0
    assert backends_in(scraped, "backend_requests_total") == {FAST, SLOW}
    ok = {"backend": SLOW, "model": "mock", "status": "success", "error_type": "none"}
    assert value(scraped, "backend_requests_total", **ok) == 1
