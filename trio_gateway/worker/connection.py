"""One gateway's connection to a worker: its reader, its generations, its writer.

Per connection: a nursery; per `generate`: a task in it under its own cancel scope (a
`Flight`), listed in the worker's in-flight ledger so a drain waits for it. `cancel`
cancels that scope; the connection closing cancels the connection's nursery, so every
generation on it stops at once. Chunks go out only against credit (`CreditWindow`), through
the connection's one writer (`worker.writer`). However a connection ends, only its own
generations end with it: nothing a gateway does takes the worker down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import ErrorKind, GatewayError, internal_error
from trio_gateway.generation import ENDPOINTS, Chunk
from trio_gateway.lifecycle.flight import CLIENT_DISCONNECTED, SHUTDOWN, Flight
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.logs import request_id_var
from trio_gateway.plane.codec import ProtocolError, decode, encode
from trio_gateway.plane.errors import error_frame
from trio_gateway.plane.frames import (
    PROTOCOL_VERSION,
    Cancel,
    ChunkFrame,
    CloseSession,
    Credit,
    End,
    ErrorFrame,
    Generate,
    Hello,
    OpenSession,
    SessionReply,
)
from trio_gateway.worker.credit import CreditWindow
from trio_gateway.worker.metrics import WorkerMetrics
from trio_gateway.worker.sessions import WorkerSessions
from trio_gateway.worker.writer import Outbound, write

log = logging.getLogger("trio_gateway.worker")


@dataclass(frozen=True, slots=True)
class WorkerParts:
    """What every connection of a worker serves from: one engine, one ledger, one drain."""

    worker_id: str
    engine: Engine
    max_inflight: int  # generations at once, per connection
    ledger: InFlightLedger
    shutdown: GracefulShutdown
    sessions: WorkerSessions
    metrics: WorkerMetrics


@dataclass(eq=False)
class _Generation:
    flight: Flight
    credit: CreditWindow


class GatewayConnection:
    def __init__(self, ws: WebSocketConnection, peer: str, worker: WorkerParts) -> None:
        self.ws = ws
        self.peer = peer
        self.worker = worker
        self.generations: dict[str, _Generation] = {}

    async def serve(self) -> None:
        """Says hello, then reads until the gateway goes; every way out is handled here."""
        ws = self.ws
        try:
            engine = self.worker.engine
            hello = Hello(
                self.worker.worker_id,
                engine.models,
                self.worker.max_inflight,
                PROTOCOL_VERSION,
                engine.streams_unary,
                dict(engine.context_lengths),
                engine.keeps_session_history,
                ENDPOINTS,
            )
            await ws.send_message(encode(hello))
            outbox, outgoing = trio.open_memory_channel[Outbound](math.inf)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, ws, outgoing)
                try:
                    await self._read(nursery, outbox)
                finally:
                    nursery.cancel_scope.cancel()  # the gateway is gone: stop everything
        except* ConnectionClosed:
            log.info("gateway %s disconnected", self.peer)
        except* ProtocolError as group:
            log.error("gateway %s sent a broken frame, closing: %s", self.peer, group.exceptions[0])
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.aclose(code=1002, reason="protocol error")
        except* Exception:
            log.exception("connection from gateway %s failed", self.peer)

    async def _read(self, nursery: trio.Nursery, outbox: trio.MemorySendChannel[Outbound]) -> None:
        ws, worker = self.ws, self.worker
        while True:
            try:
                message = decode(await ws.get_message())
            except ProtocolError as error:
                if error.request_id is None:
                    raise
                log.error("bad frame for request %s: %s", error.request_id, error)
                await _send_error(ws, error.request_id, internal_error(f"bad frame: {error}"))
                continue
            if isinstance(message, Generate):
                accepting = worker.shutdown.accepting
                if not accepting or len(self.generations) >= worker.max_inflight:
                    reason = "full" if accepting else "draining"
                    await ws.send_message(
                        encode(
                            ErrorFrame(
                                message.id,
                                f"worker {worker.worker_id} is {reason}",
                                "unavailable",
                                reason,
                                503,
                            )
                        )
                    )
                    continue
                if message.id in self.generations:
                    await _send_error(
                        ws, message.id, internal_error(f"request {message.id} is already running")
                    )
                    continue
                # Registered before its task runs, so a `cancel` or `credit` read next finds
                # it, and `max_inflight` counts it at once.
                request = message.request
                flight = Flight(message.id, request.model, request.endpoint, trio.current_time())
                self.generations[message.id] = _Generation(flight, CreditWindow(message.window))
                nursery.start_soon(self._generate, outbox, message)
            elif isinstance(message, Credit):
                generation = self.generations.get(message.id)
                if generation is not None:
                    generation.credit.give(message.n)
            elif isinstance(message, Cancel):
                generation = self.generations.get(message.id)
                if generation is not None:
                    generation.flight.cancel(CLIENT_DISCONNECTED)
                    # Wall-clock stamp: benchmarks/worker_path.py measures disconnect → cancel.
                    log.debug(
                        "request %s: cancelled by the gateway at %.6f", message.id, time.time()
                    )
            elif isinstance(message, OpenSession):
                if worker.shutdown.accepting:
                    reply = await worker.sessions.open(message)
                else:
                    reply = SessionReply(
                        message.id, "error", f"worker {worker.worker_id} is draining"
                    )
                await ws.send_message(encode(reply))
            elif isinstance(message, CloseSession):
                await worker.sessions.close(message.session_id)
                await ws.send_message(encode(SessionReply(message.id, "ok")))
            else:
                log.warning("unexpected %s frame from the gateway ignored", type(message).__name__)

    async def _generate(self, outbox: trio.MemorySendChannel[Outbound], frame: Generate) -> None:
        worker = self.worker
        request = frame.request
        request_id_var.set(request.trace_id or frame.id)  # this task's log lines
        session = worker.sessions.get(frame.session_id) if frame.session_id else None
        if session is not None:
            request = dataclasses.replace(request, session_id=frame.session_id)
            frame = Generate(frame.id, request, frame.window, frame.session_id)
            worker.sessions.begin(session)
        generation = self.generations[frame.id]
        flight = generation.flight
        worker.ledger.add(flight)
        worker.metrics.active.inc()
        outcome = "cancelled"
        try:
            with flight.scope:
                await self._stream(outbox, frame, generation)
                outcome = "finished"
            if flight.cancel_reason == SHUTDOWN:
                outbox.send_nowait(error_frame(frame.id, shut_down()))
        except GatewayError as error:
            outcome = "error"
            outbox.send_nowait(error_frame(frame.id, error))
        except trio.Cancelled:
            if flight.cancel_reason is None:
                flight.cancel_reason = "connection_lost"
            raise
        finally:
            if session is not None:
                worker.sessions.end(session)
            self.generations.pop(frame.id, None)
            worker.ledger.remove(flight)
            flight.done.set()
            worker.metrics.active.dec()
            worker.metrics.requests.labels(outcome).inc()
            if flight.cancel_reason is not None:
                worker.metrics.cancellations.labels(flight.cancel_reason).inc()

    async def _stream(
        self,
        outbox: trio.MemorySendChannel[Outbound],
        frame: Generate,
        generation: _Generation,
    ) -> None:
        """Engine → local channel → the connection's outbox, each chunk against one credit."""
        send, receive = trio.open_memory_channel[Chunk](max(1, frame.window))
        failure: GatewayError | None = None
        engine = self.worker.engine

        async def produce() -> None:
            nonlocal failure
            with send:
                try:
                    await engine.generate(frame.request, send)
                except GatewayError as error:
                    failure = error
                except Exception:
                    log.exception("engine failed on request %s", frame.id)
                    failure = internal_error()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            with receive:
                async for chunk in receive:
                    try:
                        payload = chunk.payload.decode()
                    except UnicodeDecodeError:  # this request's failure, not the connection's
                        failure = internal_error("The engine sent an answer that is not UTF-8.")
                        nursery.cancel_scope.cancel()
                        break
                    await generation.credit.take()
                    outbox.send_nowait(
                        ChunkFrame(
                            frame.id,
                            payload,
                            chunk.tokens,
                            chunk.finish_reason,
                            chunk.prompt_tokens,
                        )
                    )
        if failure is not None:
            raise failure
        outbox.send_nowait(End(frame.id))


def shut_down() -> GatewayError:
    return GatewayError(ErrorKind.SHUTDOWN, "the worker shut down")


async def _send_error(ws: WebSocketConnection, request_id: str, error: GatewayError) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send_message(encode(error_frame(request_id, error)))
