"""A worker connection reads frames in order: a `cancel` read right after its `generate`
finds the generation (registered before its task runs), and one request's bad engine bytes
fail that request only. Driven with an in-memory WebSocket stand-in, no socket."""

from __future__ import annotations

import orjson
import trio
import trio.testing

from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.worker.connection import GatewayConnection, WorkerParts
from trio_gateway.worker.metrics import WorkerMetrics
from trio_gateway.worker.sessions import WorkerSessions


class Engine:
    name = "engine"
    models = ("m",)
    url = None
    streams_unary = True
    context_lengths: dict[str, int] = {}
    keeps_session_history = False
    available = True
    capacity = None

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        for payload in self.payloads:
            await send.send(Chunk("", 1, None, None, payload))
        await send.send(Chunk("", 1, "stop", None, b"x"))


class Frames:
    """What the connection reads and what it sends, in memory."""

    def __init__(self, incoming: list[str]) -> None:
        self.send_channel, self.receive_channel = trio.open_memory_channel[str](100)
        for frame in incoming:
            self.send_channel.send_nowait(frame)
        self.sent: list[dict[str, object]] = []

    async def send_message(self, message: str) -> None:
        self.sent.append(orjson.loads(message))
        await trio.lowlevel.checkpoint()

    async def get_message(self) -> str:
        return await self.receive_channel.receive()

    def kinds(self, request_id: str) -> list[object]:
        return [frame["type"] for frame in self.sent if frame.get("id") == request_id]


def generate(request_id: str, window: int = 4) -> str:
    request = {
        "request_id": request_id,
        "endpoint": "completion",
        "body": {"model": "m", "prompt": "hi"},
    }
    return orjson.dumps(
        {"type": "generate", "id": request_id, "request": request, "window": window}
    ).decode()


def parts(engine: Engine) -> WorkerParts:
    metrics = WorkerMetrics()
    ledger = InFlightLedger()
    return WorkerParts(
        "w",
        engine,
        8,
        ledger,
        GracefulShutdown(ledger, 1.0),
        WorkerSessions(engine, metrics),
        metrics,  # type: ignore[arg-type]
    )


async def test_a_cancel_right_after_its_generate_is_never_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # trio may run the reader's next turn before the generation's task: 20 tries make a
    # lost cancel show however the scheduler orders them.
    worker = parts(Engine([b"y"] * 1000))
    cancel = orjson.dumps({"type": "cancel", "id": "r1"}).decode()
    for _ in range(20):
        frames = Frames([generate("r1"), cancel])
        connection = GatewayConnection(frames, "gateway", worker)  # type: ignore[arg-type]
        with trio.move_on_after(5):
            await connection.serve()
        assert connection.generations == {}
        assert "end" not in frames.kinds("r1")  # it stopped, it did not run to the end
        assert frames.kinds("r1").count("chunk") <= 4  # and never past its credit
    cancelled = worker.metrics.cancellations.labels("client_disconnected")._value.get()
    assert cancelled == 20


async def test_bytes_that_are_not_utf8_fail_their_request_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = parts(Engine([b"ok", b"\xff\xfe"]))
    credit = orjson.dumps({"type": "credit", "id": "r2", "n": 100}).decode()
    frames = Frames([generate("r1", window=100), generate("r2", window=1), credit])
    connection = GatewayConnection(frames, "gateway", worker)  # type: ignore[arg-type]
    with trio.move_on_after(5):
        await connection.serve()
    errors = [f for f in frames.sent if f["type"] == "error"]
    assert [e["id"] for e in errors] == ["r1", "r2"]  # each failed alone, as an error frame
    assert all("UTF-8" in str(e["message"]) for e in errors)
    assert connection.generations == {}
