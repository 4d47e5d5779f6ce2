"""A flight driven with no ASGI at all: a fake engine, a `trio.Event` as the client-gone
signal, the chunk reader as the writer, under MockClock.

What the lifecycle promises, seen from its own interface: the client leaving cancels the
engine at once, the engine's silence cancels it after the inactivity timeout (counted
against its breaker), and a writer busy with a slow client is not engine silence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio
import trio.testing

from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.lifecycle.flight import (
    CLIENT_DISCONNECTED,
    RESPONSE_TIMEOUT,
    ClientGoneSignal,
    Flight,
    run_flight,
)
from trio_gateway.lifecycle.reader import ChunkReader
from trio_gateway.metrics import GatewayMetrics
from trio_gateway.openai.errors import http_status
from trio_gateway.router.admission import Backend, Router
from trio_gateway.router.breaker import BreakerState
from trio_gateway.router.policies import RoundRobin

INACTIVITY_S = 5.0


@dataclass(eq=False)
class FakeEngine:
    """Sends `chunks` chunks, `gap` seconds apart (the first after `gap` too), then stays
    silent for good; records how each `generate` ended."""

    chunks: int
    gap: float = 0.01
    name: str = "fake"
    models: tuple[str, ...] = ("m",)
    capacity: int | None = None
    available: bool = True
    streams_unary: bool = True
    context_lengths: Mapping[str, int] = field(default_factory=dict)
    endings: list[str] = field(default_factory=list)
    url: str | None = None
    on_available: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        try:
            for _ in range(self.chunks):
                await trio.sleep(self.gap)
                await send.send(Chunk(text="x", payload=b'data: {"x": 1}\n\n'))
            await trio.sleep_forever()
        except trio.Cancelled:
            self.endings.append("cancelled")
            raise

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        raise NotImplementedError

    async def close_session(self, session_id: str) -> None:
        raise NotImplementedError


@dataclass
class Running:
    flight: Flight
    reader: ChunkReader
    backend: Backend


def request() -> GenerationRequest:
    return GenerationRequest("r1", "chat", "m", "hello", stream=True)


async def start_flight(
    nursery: trio.Nursery, engine: FakeEngine, client: ClientGoneSignal, buffer: int = 1
) -> Running:
    router = Router(RoundRobin(), breaker_threshold=1)
    backend = router.add(engine)  # type: ignore[arg-type]
    flight = Flight("r1", "m", "chat", trio.current_time())
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](buffer)
    reader = ChunkReader(chunks_out, flight, GatewayMetrics())
    nursery.start_soon(
        run_flight, flight, router, request(), chunks_in, client, INACTIVITY_S, 60.0, None
    )
    return Running(flight, reader, backend)


async def read_all(reader: ChunkReader) -> int:
    """As the response writer does: batches until the engine is done; the chunks read."""
    read = 0
    while not reader.ended:
        read += len(await reader.batch())
    return read


async def test_client_gone_mid_stream_cancels_the_engine_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = FakeEngine(chunks=1000)
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await start_flight(nursery, engine, gone)
        for _ in range(3):
            await running.reader.batch()
        assert trio.current_time() == 0.03
        gone.set()
        assert await read_all(running.reader) <= 1  # at most one sent before the cancel
        assert trio.current_time() == 0.03  # no time passes between the signal and the end
        await running.flight.done.wait()
    flight = running.flight
    assert flight.cancel_reason == CLIENT_DISCONNECTED
    assert engine.endings == ["cancelled"]
    outcome = flight.outcome(running.reader.finish_reason)
    assert outcome is not None and http_status(outcome) == 499
    assert running.backend.inflight == 0
    assert running.backend.breaker.state is BreakerState.CLOSED  # a client leaving is no fault


async def test_client_gone_before_the_first_chunk(autojump_clock: trio.testing.MockClock) -> None:
    engine = FakeEngine(chunks=1, gap=30.0)  # a long prefill, longer than the inactivity timeout
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await start_flight(nursery, engine, gone)
        with trio.move_on_after(1):  # the client waits 1 s for the first chunk, then leaves
            await running.reader.batch()
        gone.set()
        assert await read_all(running.reader) == 0
    assert trio.current_time() == 1.0
    assert running.flight.cancel_reason == CLIENT_DISCONNECTED
    assert engine.endings == ["cancelled"]
    assert running.backend.inflight == 0


async def test_engine_silence_cancels_after_the_inactivity_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = FakeEngine(chunks=2)
    never_gone = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await start_flight(nursery, engine, never_gone)
        assert await read_all(running.reader) == 2
        # Silent since its second chunk at 0.02 s: cut exactly the timeout later.
        assert trio.current_time() == 0.02 + INACTIVITY_S
    flight = running.flight
    assert flight.cancel_reason == RESPONSE_TIMEOUT
    assert engine.endings == ["cancelled"]
    outcome = flight.outcome(running.reader.finish_reason)
    assert outcome is not None and http_status(outcome) == 504
    assert running.backend.inflight == 0
    # The engine held the request all along: its silence counts against it (threshold 1).
    assert running.backend.breaker.state is BreakerState.OPEN


async def test_a_slow_writer_is_not_engine_silence(autojump_clock: trio.testing.MockClock) -> None:
    """The silence timer runs only while the writer waits on the engine: a writer that
    spends longer than the timeout on a slow client, with chunks queued, cuts nothing."""
    engine = FakeEngine(chunks=3)
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await start_flight(nursery, engine, gone, buffer=8)
        await running.reader.batch()
        await trio.sleep(4 * INACTIVITY_S)  # the writer blocked on a slow client
        assert running.flight.cancel_reason is None
        assert len(await running.reader.batch()) == 2  # both queued meanwhile, in one batch
        assert running.flight.waiting_since == math.inf
        gone.set()
        await read_all(running.reader)
    assert running.flight.cancel_reason == CLIENT_DISCONNECTED
