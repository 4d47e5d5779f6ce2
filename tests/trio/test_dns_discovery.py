"""Discovery from DNS through the whole gateway, on MockClock, with a resolver the test
controls (no real DNS): a `dns+` entry's addresses become member backends, an address that
appears is routed to, one that vanishes finishes its streams then stops, and a resolver that
fails keeps the members it had.
"""

from __future__ import annotations

import logging

import orjson
import pytest
import trio
import trio.testing

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.recording_engine import RecordingEngine
from trio_gateway.backends_config import BackendSpec
from trio_gateway.config import GatewayConfig
from trio_gateway.discovery.members import DnsName
from trio_gateway.discovery.watch import RESOLVE_TIMEOUT_S, DnsWatch
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine

CHAT = "/v1/chat/completions"
REFRESH_S = 5.0
TOKENS = 100  # at 100 ms a step: a stream of 10 s, past the next resolution


class FakeResolver:
    """Answers what the test last set: a set of addresses, or an error to raise."""

    def __init__(self, *addresses: str) -> None:
        self.answer: frozenset[str] | OSError = frozenset(addresses)
        self.asked: list[tuple[str, int]] = []
        self.hang = False

    def set(self, *addresses: str) -> None:
        self.answer = frozenset(addresses)

    async def resolve(self, host: str, port: int) -> frozenset[str]:
        self.asked.append((host, port))
        if self.hang:
            await trio.sleep_forever()
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


class MemberEngine(RecordingEngine):
    """A mock standing for one address; named as the real engine would be (an upstream by
    its member name, a worker by the id its hello says: here `pod-N` for address 10.0.0.N)."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(MockEngine(spec.models or ("m",), itl_ms=100.0))
        self.spec = spec
        self.url = spec.url
        last = spec.url.rsplit(":", 1)[0].rsplit(".", 1)[-1]
        self.name = f"pod-{last}" if spec.is_worker else spec.name
        self.stopped = False

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        await self.inner.open_session(session_id, idle_timeout_s)

    async def close_session(self, session_id: str) -> None:
        await self.inner.close_session(session_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            self.stopped = True


class Factory:
    def __init__(self) -> None:
        self.made: dict[str, list[MemberEngine]] = {}

    def __call__(self, spec: BackendSpec) -> Engine:
        engine = MemberEngine(spec)
        self.made.setdefault(spec.name, []).append(engine)
        return engine


def vllm(**changes: object) -> BackendSpec:
    fields: dict[str, object] = {
        "name": "vllm",
        "url": "dns+http://vllm.test:8000/v1",
        "models": ("m",),
        "capacity": 3,
        "weight": 2,
    }
    fields.update(changes)
    return BackendSpec(**fields)  # type: ignore[arg-type]


def config(*specs: BackendSpec) -> GatewayConfig:
    return GatewayConfig(backends=specs, routing_policy="round_robin", dns_refresh_s=REFRESH_S)


async def past_next_resolution() -> None:
    """Sleep just past the watch's next wake-up (which may fall due at the same instant as
    a plain sleep of `REFRESH_S` started a moment after it)."""
    await trio.sleep(REFRESH_S + 0.01)


def routed(harness: Harness) -> list[str]:
    return [backend.name for backend in harness.gateway.router.backends]


def streamed_tokens(body: bytes) -> int:
    events = [
        orjson.loads(block[len(b"data: ") :])
        for block in body.split(b"\n\n")
        if block.startswith(b"data: {")
    ]
    return sum(1 for e in events for choice in e["choices"] if choice["delta"].get("content"))


def sample(harness: Harness, name: str, labels: dict[str, str]) -> float | None:
    return harness.gateway.metrics.registry.get_sample_value(name, labels)


async def test_addresses_become_members_configured_as_their_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver("10.0.0.1")
    factory = Factory()
    async with running_gateway(
        config(vllm()), engine_factory=factory, resolver=resolver
    ) as harness:
        assert routed(harness) == ["vllm/10.0.0.1:8000"]  # resolved before serving
        assert resolver.asked == [("vllm.test", 8000)]

        resolver.set("10.0.0.1", "10.0.0.2")
        await past_next_resolution()

        assert routed(harness) == ["vllm/10.0.0.1:8000", "vllm/10.0.0.2:8000"]
        member = factory.made["vllm/10.0.0.2:8000"][0].spec
        assert member.url == "http://10.0.0.2:8000/v1"
        assert member.host_name == "vllm.test" and member.member_of == "vllm"
        for backend in harness.gateway.router.backends:
            assert backend.capacity == 3 and backend.weight == 2 and backend.label == "vllm"
        assert [s.name for s in harness.gateway.fleet.configured] == ["vllm"]  # the entry, once
        # Both members serve, and every series says the entry's name, not an address.
        for _ in range(2):
            answer = await harness.request("POST", CHAT, chat(model="m", max_tokens=2))
            assert answer.status == 200
        assert [len(engines[0].endings) for engines in factory.made.values()] == [1, 1]
        requests = "trio_gateway_backend_requests_total"
        ok = {"model": "m", "status": "success", "error_type": "none"}
        assert sample(harness, requests, {"backend": "vllm", **ok}) == 2
        harness.gateway.router.backends[1].engine.available = False  # type: ignore[misc]
        harness.gateway.refresh_gauges()
        assert sample(harness, "trio_gateway_backend_up", {"backend": "vllm"}) == 1  # one is
        harness.gateway.router.backends[0].engine.available = False  # type: ignore[misc]
        harness.gateway.refresh_gauges()
        assert sample(harness, "trio_gateway_backend_up", {"backend": "vllm"}) == 0
        families = {
            sample.labels.get("backend")
            for metric in harness.gateway.metrics.registry.collect()
            for sample in metric.samples
            if metric.name.startswith("trio_gateway_backend")
        }
        assert families == {"vllm"}


async def test_a_vanished_address_finishes_its_stream_then_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver("10.0.0.1", "10.0.0.2")
    factory = Factory()
    async with running_gateway(
        config(vllm()), engine_factory=factory, resolver=resolver
    ) as harness:
        stream = harness.start("POST", CHAT, chat(model="m", stream=True, max_tokens=TOKENS))
        await stream.wait_until(lambda e: len(e.body) > 0)
        first = factory.made["vllm/10.0.0.1:8000"][0]  # round robin's first
        assert harness.gateway.router.find("vllm/10.0.0.1:8000").inflight == 1  # type: ignore[union-attr]

        resolver.set("10.0.0.2")
        await past_next_resolution()  # as the stream goes on

        assert routed(harness) == ["vllm/10.0.0.2:8000"]
        assert not stream.finished.is_set(), bytes(stream.body)[-300:]
        assert not first.stopped
        answer = await harness.request("POST", CHAT, chat(model="m", max_tokens=2))
        assert answer.status == 200
        assert factory.made["vllm/10.0.0.2:8000"][0].endings == ["finished"]
        await stream.finished.wait()
        assert stream.status == 200
        assert streamed_tokens(bytes(stream.body)) == TOKENS
        assert stream.events()[-1] == "[DONE]"
        assert first.endings == ["finished"]
        await trio.testing.wait_all_tasks_blocked()
        assert first.stopped  # drained, then closed
        assert [m.name for m in harness.gateway.fleet.members("vllm")] == ["vllm/10.0.0.2:8000"]


@pytest.mark.parametrize("failure", ["error", "empty", "timeout"])
async def test_a_failing_resolver_keeps_the_last_members(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.INFO, "trio_gateway")
    resolver = FakeResolver("10.0.0.1", "10.0.0.2")
    factory = Factory()
    async with running_gateway(
        config(vllm()), engine_factory=factory, resolver=resolver
    ) as harness:
        if failure == "error":
            resolver.answer = OSError(-2, "Name or service not known")
        elif failure == "empty":
            resolver.set()
        else:
            resolver.hang = True
        # Each resolution waits its timeout when it hangs, then the refresh interval.
        period = REFRESH_S + (RESOLVE_TIMEOUT_S if resolver.hang else 0.0)
        await trio.sleep(3 * period + 0.01)

        assert routed(harness) == ["vllm/10.0.0.1:8000", "vllm/10.0.0.2:8000"]
        assert not any(engines[0].stopped for engines in factory.made.values())
        failures = sample(
            harness, "trio_gateway_dns_resolution_failures_total", {"backend": "vllm"}
        )
        assert failures == 3
        outage = [m for m in caplog.messages if "cannot resolve vllm.test" in m]
        assert len(outage) == 1 and "2 kept" in outage[0]  # once per outage
        answer = await harness.request("POST", CHAT, chat(model="m", max_tokens=2))
        assert answer.status == 200

        resolver.hang = False
        resolver.set("10.0.0.2")
        await trio.sleep(REFRESH_S + RESOLVE_TIMEOUT_S)
        assert routed(harness) == ["vllm/10.0.0.2:8000"]
        assert any("vllm.test resolves again" in m for m in caplog.messages)


async def test_a_gateway_whose_name_does_not_resolve_yet_starts_and_adds_it_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver()
    resolver.answer = OSError(-2, "Name or service not known")
    factory = Factory()
    async with running_gateway(
        config(vllm()), engine_factory=factory, resolver=resolver
    ) as harness:
        assert routed(harness) == []
        resolver.set("10.0.0.7")
        await past_next_resolution()
        assert routed(harness) == ["vllm/10.0.0.7:8000"]


async def test_worker_members_are_known_by_their_worker_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sessions and policies key a worker by its id (the StatefulSet's pod name), so a DNS
    worker member is named by its hello, labelled by its entry."""
    resolver = FakeResolver("10.0.0.4", "10.0.0.5")
    factory = Factory()
    workers = GatewayConfig(workers=("dns+ws://trio-gateway-worker:9001",), dns_refresh_s=REFRESH_S)
    async with running_gateway(workers, engine_factory=factory, resolver=resolver) as harness:
        backends = harness.gateway.router.backends
        assert [b.name for b in backends] == ["pod-4", "pod-5"]
        assert {b.label for b in backends} == {"dns+ws://trio-gateway-worker:9001"}
        member = factory.made["dns+ws://trio-gateway-worker:9001/10.0.0.4:9001"][0].spec
        assert member.url == "ws://10.0.0.4:9001" and member.host_name == "trio-gateway-worker"
        assert member.from_flags  # the global --worker-token applies
        answer = await harness.request("POST", CHAT, chat(model="m", session_id="s1"))
        assert answer.status == 200
        session = harness.gateway.sessions.table.get("s1")
        assert session is not None and session.worker in ("pod-4", "pod-5")


async def test_reload_replaces_members_in_place_and_drains_a_removed_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver("10.0.0.1", "10.0.0.2")
    factory = Factory()
    async with running_gateway(
        config(vllm()), engine_factory=factory, resolver=resolver
    ) as harness:
        olds = [engines[0] for engines in factory.made.values()]
        diff = await harness.gateway.fleet.reload_backends([vllm(capacity=5)])
        assert [s.name for s in diff.changed] == ["vllm"]
        assert routed(harness) == ["vllm/10.0.0.1:8000", "vllm/10.0.0.2:8000"]
        assert [b.capacity for b in harness.gateway.router.backends] == [5, 5]
        await trio.testing.wait_all_tasks_blocked()
        assert all(old.stopped for old in olds)
        asked = len(resolver.asked)
        await past_next_resolution()
        assert len(resolver.asked) == asked + 1  # one watch, the old one gone

        stream = harness.start("POST", CHAT, chat(model="m", stream=True, max_tokens=TOKENS))
        await stream.wait_until(lambda e: len(e.body) > 0)
        await harness.gateway.fleet.reload_backends([])
        assert routed(harness) == []
        await stream.finished.wait()
        assert streamed_tokens(bytes(stream.body)) == TOKENS
        await trio.sleep(2 * REFRESH_S)
        assert len(resolver.asked) == asked + 1  # no longer resolved
        await trio.testing.wait_all_tasks_blocked()
        assert all(engines[-1].stopped for engines in factory.made.values())


async def test_watch_applies_only_a_changed_set() -> None:
    resolver = FakeResolver("10.0.0.1")
    applied: list[frozenset[str]] = []

    async def apply(addresses: frozenset[str]) -> bool:
        applied.append(addresses)
        return True

    watch = DnsWatch("e", DnsName("e.test", 80), resolver, apply, refresh_s=1.0)
    await watch.refresh()
    await watch.refresh()
    resolver.set("10.0.0.1", "10.0.0.3")
    await watch.refresh()
    assert applied == [frozenset({"10.0.0.1"}), frozenset({"10.0.0.1", "10.0.0.3"})]


async def test_a_member_whose_name_is_taken_is_left_out_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker member is named by its URL until its hello: the same address given as a
    plain --worker too takes that name first."""
    resolver = FakeResolver("10.0.0.4")
    factory = Factory()
    both = GatewayConfig(
        workers=("ws://10.0.0.4:9001", "dns+ws://w.test:9001"), dns_refresh_s=REFRESH_S
    )

    def named_by_url(spec: BackendSpec) -> Engine:
        engine = factory(spec)
        assert isinstance(engine, MemberEngine)
        engine.name = spec.url
        return engine

    async with running_gateway(both, engine_factory=named_by_url, resolver=resolver) as harness:
        assert routed(harness) == ["ws://10.0.0.4:9001"]
        assert any("is already routed to" in m for m in caplog.messages)
        resolver.set("10.0.0.4", "10.0.0.5")
        await past_next_resolution()
        assert routed(harness) == ["ws://10.0.0.4:9001", "ws://10.0.0.5:9001"]


async def test_a_set_that_fails_to_apply_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    resolver = FakeResolver("10.0.0.1")
    applied: list[frozenset[str]] = []

    async def apply(addresses: frozenset[str]) -> bool:
        applied.append(addresses)
        if len(applied) == 1:
            raise ValueError("cannot make that member")
        return True

    watch = DnsWatch("e", DnsName("e.test", 80), resolver, apply, refresh_s=1.0)
    await watch.refresh()
    assert watch.known is None and any(
        "applying appeared 10.0.0.1 failed" in m for m in caplog.messages
    )
    await watch.refresh()
    assert applied == [frozenset({"10.0.0.1"})] * 2 and watch.known == frozenset({"10.0.0.1"})


async def test_a_member_that_failed_to_start_is_tried_at_the_next_resolution() -> None:
    resolver = FakeResolver("10.0.0.1")
    applied: list[frozenset[str]] = []

    async def apply(addresses: frozenset[str]) -> bool:
        applied.append(addresses)
        return len(applied) > 1  # the first time, a member did not start

    watch = DnsWatch("e", DnsName("e.test", 80), resolver, apply, refresh_s=1.0)
    await watch.refresh()
    assert watch.known is None
    await watch.refresh()  # the same set: applied again, since it was not all applied
    await watch.refresh()  # now it was: nothing to do
    assert applied == [frozenset({"10.0.0.1"})] * 2 and watch.known == frozenset({"10.0.0.1"})
