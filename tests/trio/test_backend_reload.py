"""A reload under streams, on MockClock: the whole gateway (ASGI app, router, flights) with
mock engines made for each configured backend, so every step is in memory and timed exactly.

What a reload promises: a removed backend takes no new request but finishes the streams it
holds, and only then stops; a changed one is replaced, its streams finishing on the old
definition while new requests go to the new; a bad file changes nothing.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest
import trio
import trio.testing

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.recording_engine import RecordingEngine
from trio_gateway.backends_config import BackendSpec
from trio_gateway.config import ConfigError, GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine

TOKENS = 100  # at 10 ms a step: a stream of about a second


class StoppableEngine(RecordingEngine):
    """A mock that says when its background work was stopped (the backend closed)."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(MockEngine(spec.models or ("m",), itl_ms=10.0))
        self.spec = spec
        self.stopped = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.spec.url.startswith("http://broken"):
            raise OSError("cannot start")
        try:
            await super().run(task_status=task_status)
        finally:
            self.stopped = True


class Factory:
    """Makes each backend's engine and keeps every one made, by name, oldest first."""

    def __init__(self) -> None:
        self.made: dict[str, list[StoppableEngine]] = {}

    def __call__(self, spec: BackendSpec) -> Engine:
        engine = StoppableEngine(spec)
        self.made.setdefault(spec.name, []).append(engine)
        return engine


def spec(name: str, weight: int = 1) -> BackendSpec:
    return BackendSpec(name=name, url=f"http://{name}.test:8000/v1", models=("m",), weight=weight)


def config(*specs: BackendSpec) -> GatewayConfig:
    return GatewayConfig(backends=specs, routing_policy="round_robin")


def ask() -> dict[str, object]:
    return chat(model="m", stream=True, max_tokens=TOKENS)


def streamed_tokens(body: bytes) -> int:
    events = [
        orjson.loads(block[len(b"data: ") :])
        for block in body.split(b"\n\n")
        if block.startswith(b"data: {")
    ]
    return sum(
        1 for event in events for choice in event["choices"] if choice["delta"].get("content")
    )


def routed(harness: Harness) -> list[str]:
    return [backend.name for backend in harness.gateway.router.backends]


async def test_removed_backend_finishes_its_stream_then_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = Factory()
    async with running_gateway(config(spec("a"), spec("b")), engine_factory=factory) as harness:
        stream = harness.start("POST", "/v1/chat/completions", ask())  # round robin: a
        await stream.wait_until(lambda e: len(e.body) > 0)
        engine_a = factory.made["a"][0]
        assert harness.gateway.router.find("a") is not None
        assert harness.gateway.router.find("a").inflight == 1  # type: ignore[union-attr]

        diff = await harness.gateway.fleet.reload_backends([spec("b"), spec("c")])

        assert [s.name for s in diff.removed] == ["a"]
        assert [s.name for s in diff.added] == ["c"]
        assert routed(harness) == ["b", "c"]
        assert not engine_a.stopped  # still serving the stream it holds
        # New requests go to the others only.
        for _ in range(4):
            answer = await harness.request(
                "POST", "/v1/chat/completions", chat(model="m", max_tokens=2)
            )
            assert answer.status == 200
        assert engine_a.endings == []
        await stream.finished.wait()
        assert stream.status == 200
        assert streamed_tokens(bytes(stream.body)) == TOKENS
        assert stream.events()[-1] == "[DONE]"
        assert engine_a.endings == ["finished"]
        await trio.testing.wait_all_tasks_blocked()  # the drain task saw the backend idle
        assert engine_a.stopped
        assert not factory.made["b"][0].stopped
        assert len(factory.made["c"][0].endings) == 2  # c took its share of the four


async def test_changed_backend_is_replaced_without_cutting_its_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = Factory()
    async with running_gateway(config(spec("a")), engine_factory=factory) as harness:
        stream = harness.start("POST", "/v1/chat/completions", ask())
        await stream.wait_until(lambda e: len(e.body) > 0)
        old = factory.made["a"][0]

        diff = await harness.gateway.fleet.reload_backends([spec("a", weight=3)])

        assert [s.name for s in diff.changed] == ["a"]
        new = factory.made["a"][1]
        assert routed(harness) == ["a"]
        backend = harness.gateway.router.find("a")
        assert backend is not None and backend.engine is new and backend.weight == 3
        answer = await harness.request(
            "POST", "/v1/chat/completions", chat(model="m", max_tokens=2)
        )
        assert answer.status == 200
        assert new.endings == ["finished"]  # the new request went to the new definition
        assert not stream.finished.is_set()
        await stream.finished.wait()
        assert streamed_tokens(bytes(stream.body)) == TOKENS
        assert old.endings == ["finished"]
        await trio.testing.wait_all_tasks_blocked()
        assert old.stopped and not new.stopped


async def test_unchanged_reload_does_nothing_and_a_bad_file_changes_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with running_gateway(config(spec("a")), engine_factory=factory) as harness:
        diff = await harness.gateway.fleet.reload_backends([spec("a")])
        assert diff.empty
        assert len(factory.made["a"]) == 1

        def broken() -> GatewayConfig:
            raise ConfigError("backends[0].url: required")

        assert await harness.gateway.reload(broken) is None
        assert "reload: backends[0].url: required; the running backends are kept" in caplog.messages
        assert routed(harness) == ["a"]
        assert len(factory.made["a"]) == 1
        answer = await harness.request(
            "POST", "/v1/chat/completions", chat(model="m", max_tokens=2)
        )
        assert answer.status == 200


async def test_reload_reads_the_settings_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with running_gateway(config(spec("a")), engine_factory=factory) as harness:
        changed = dataclasses.replace(config(spec("a"), spec("b")), queue_size=7)
        diff = await harness.gateway.reload(lambda: changed)
        assert diff is not None and [s.name for s in diff.added] == ["b"]
        assert routed(harness) == ["a", "b"]
        assert [s.name for s in harness.gateway.fleet.configured] == ["a", "b"]
        assert harness.gateway.router.queue_size == 1024  # only the backends reload
        assert any("queue_size changed" in message for message in caplog.messages)


async def test_no_reload_while_shutting_down(autojump_clock: trio.testing.MockClock) -> None:
    factory = Factory()
    async with running_gateway(config(spec("a")), engine_factory=factory) as harness:
        harness.gateway.shutdown.request_stop("test")
        await trio.testing.wait_all_tasks_blocked()
        assert await harness.gateway.reload(lambda: config(spec("b"))) is None
        assert routed(harness) == ["a"]


async def test_a_backend_that_fails_to_start_is_left_out_and_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = Factory()
    broken = BackendSpec(name="x", url="http://broken.test:1/v1", models=("m",))
    broken_a = BackendSpec(name="a", url="http://broken.test:2/v1", models=("m",))
    async with running_gateway(config(spec("a")), engine_factory=factory) as harness:
        await harness.gateway.fleet.reload_backends([spec("a"), broken])
        assert routed(harness) == ["a"]
        assert [s.name for s in harness.gateway.fleet.configured] == ["a"]
        await harness.gateway.fleet.reload_backends([broken_a])  # a changed to what cannot start
        assert routed(harness) == ["a"]
        backend = harness.gateway.router.find("a")
        assert backend is not None and backend.engine is factory.made["a"][0]
        answer = await harness.request(
            "POST", "/v1/chat/completions", chat(model="m", max_tokens=2)
        )
        assert answer.status == 200
        diff = await harness.gateway.fleet.reload_backends([spec("a"), broken])
        assert [s.name for s in diff.added] == ["x"]  # tried again


class TLSGoneFactory(Factory):
    """As an engine whose TLS files cannot be read any more fails to be made: a ConfigError
    from the factory (`ClientTLS.context`), for a URL on the host `badtls.test`."""

    def __call__(self, spec: BackendSpec) -> Engine:
        if "badtls.test" in spec.url:
            raise ConfigError("upstream_ca_bundle: cannot load /gone.pem")
        return super().__call__(spec)


async def test_an_engine_that_cannot_be_made_leaves_its_entry_as_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = TLSGoneFactory()
    bad_b = BackendSpec(name="b", url="http://badtls.test:1/v1", models=("m",), weight=3)
    bad_c = BackendSpec(name="c", url="http://badtls.test:2/v1", models=("m",))
    async with running_gateway(config(spec("a"), spec("b")), engine_factory=factory) as harness:
        fleet = harness.gateway.fleet
        # a changes as it should; b's new engine cannot be made; c is new and cannot either.
        await fleet.reload_backends([spec("a", weight=2), bad_b, bad_c])
        weights = {b.name: b.weight for b in harness.gateway.router.backends}
        assert weights == {"a": 2, "b": 1}  # b serves on as it was, c is not there
        assert {s.name: s.weight for s in fleet.configured} == {"a": 2, "b": 1}
        # Once the files are back, the same file applies: nothing was taken as done.
        diff = await fleet.reload_backends([spec("a", weight=2), spec("b", weight=3), spec("c")])
        assert [s.name for s in diff.changed] == ["b"] and [s.name for s in diff.added] == ["c"]
        weights = {b.name: b.weight for b in harness.gateway.router.backends}
        assert weights == {"a": 2, "b": 3, "c": 1}


class SlowToComeUpFactory(Factory):
    """A definition of weight 2 is never up: its replacement waits `REPLACE_WAIT_S`."""

    def __call__(self, spec: BackendSpec) -> Engine:
        engine = super().__call__(spec)
        if spec.weight == 2:
            engine.available = False
        return engine


async def test_a_backend_deleted_while_its_new_definition_comes_up_stays_deleted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = SlowToComeUpFactory()
    async with running_gateway(config(spec("a"), spec("b")), engine_factory=factory) as harness:
        fleet = harness.gateway.fleet
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fleet.reload_backends, [spec("a"), spec("b", weight=2)])
            await trio.testing.wait_all_tasks_blocked()
            assert fleet.remove_engine("b")  # while the replacement waits
        assert routed(harness) == ["a"]
        await trio.testing.wait_all_tasks_blocked()
        assert factory.made["b"][-1].stopped  # the new definition was let go too
