"""`trio-gateway worker`: an engine (the mock by default) behind the WebSocket request plane.

Per connection: a nursery; per `generate`: a task in it under its own cancel scope, listed
in the worker's in-flight ledger. `cancel` cancels that scope; the connection closing
cancels the connection's nursery, so every generation on it stops at once. Chunks go out
only against credit: at most `window` unacknowledged per request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from trio_gateway.config import WorkerConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine
from trio_gateway.engines.ws_client import MAX_MESSAGE_BYTES, PROTOCOL_HEADER
from trio_gateway.errors import ErrorKind, GatewayError, internal_error
from trio_gateway.generation import Chunk
from trio_gateway.http.asgi import Receive, Scope, Send
from trio_gateway.http.auth import bearer_token, key_accepted
from trio_gateway.lifecycle.flight import CLIENT_DISCONNECTED, SHUTDOWN, Flight
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.logs import request_id_var
from trio_gateway.openai.errors import wire_fields
from trio_gateway.sessions.table import SessionTable
from trio_gateway.worker import protocol
from trio_gateway.worker.metrics import WorkerMetrics
from trio_gateway.worker.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ChunkFrame,
    Chunks,
    CloseSession,
    Credit,
    End,
    ErrorFrame,
    Generate,
    Hello,
    Load,
    OpenSession,
    ProtocolError,
    SessionReply,
)

log = logging.getLogger("trio_gateway.worker")


def engine_from_settings(config: WorkerConfig) -> Engine:
    """The engine this worker hosts: the OpenAI-compatible server on its node, or the mock."""
    if config.upstream:
        from trio_gateway.engines.upstream.engine import OpenAIUpstream

        return OpenAIUpstream(config.upstream, api_key=config.upstream_api_key or None)
    return MockEngine.from_settings(config)


@dataclass(eq=False)
class CreditWindow:
    """How many more chunks of one request may go out before the gateway acknowledges."""

    available: int
    _more: trio.Event = field(default_factory=trio.Event)

    async def take(self) -> None:
        while self.available <= 0:
            await self._more.wait()
        self.available -= 1

    def give(self, n: int) -> None:
        self.available += n
        self._more.set()
        self._more = trio.Event()


@dataclass(eq=False)
class _Generation:
    flight: Flight
    credit: CreditWindow


class WorkerServer:
    def __init__(self, config: WorkerConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine: Engine = engine or engine_from_settings(config)
        self.metrics = WorkerMetrics()
        self.ledger = InFlightLedger()
        self.shutdown = GracefulShutdown(self.ledger, config.drain_timeout_s)
        self.sessions = SessionTable()
        self._reaper_sleep: trio.CancelScope | None = None
        self.worker_id = config.worker_id
        self.port = config.port
        self.metrics_port = config.metrics_port

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            await nursery.start(self.shutdown.run)
            nursery.start_soon(self.reap_sessions)
            listener = await nursery.start(
                lambda task_status: serve_websocket(
                    self._handle,
                    self.config.host,
                    self.config.port,
                    None,
                    max_message_size=MAX_MESSAGE_BYTES,
                    task_status=task_status,
                )
            )
            self.port = listener.port
            self.worker_id = self.config.worker_id or f"{self.config.host}:{self.port}"
            hc = HypercornConfig()
            hc.bind = [f"{self.config.host}:{self.config.metrics_port}"]
            hc.accesslog = None
            hc.errorlog = logging.getLogger("hypercorn.error")
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    self._metrics_app,  # type: ignore[arg-type]
                    hc,
                    shutdown_trigger=trio.sleep_forever,
                    task_status=task_status,
                )
            )
            self.metrics_port = int(binds[0].rsplit(":", 1)[1])
            log.info(
                "worker %s: request plane ws://%s:%d, metrics http://%s:%d/metrics",
                self.worker_id,
                self.config.host,
                self.port,
                self.config.host,
                self.metrics_port,
            )
            task_status.started()
            await self.shutdown.wait_stopped()
            nursery.cancel_scope.cancel()

    async def _metrics_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The worker's HTTP side: `/metrics`, and `/live` and `/ready` for probes (ready
        while it takes new generations: not once it drains)."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/metrics":
            status, body = 200, self.metrics.exposition()
        elif path == "/live":
            status, body = 200, b"ok\n"
        elif path == "/ready":
            ready = self.shutdown.ready and self.engine.available
            status, body = (200, b"ready\n") if ready else (503, b"draining\n")
        else:
            status, body = 404, b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, request: WebSocketRequest) -> None:
        headers = {k.lower(): v for k, v in request.headers}
        peer = f"{request.remote}"
        if self.config.token and not key_accepted(
            bearer_token(headers.get(b"authorization")), [self.config.token]
        ):
            log.error("refused a gateway from %s: wrong or missing token", peer)
            await request.reject(401, body=b"wrong or missing worker token")
            return
        version = headers.get(PROTOCOL_HEADER, str(PROTOCOL_VERSION).encode())
        if version != str(PROTOCOL_VERSION).encode():
            log.error(
                "refused a gateway from %s: it speaks protocol %s, this worker %d",
                peer,
                version.decode(errors="replace"),
                PROTOCOL_VERSION,
            )
            await request.reject(
                400, body=f"this worker speaks protocol {PROTOCOL_VERSION}".encode()
            )
            return
        if not self.engine.available or not self.engine.models:
            # An upstream engine not answering yet: the gateway redials with backoff, and
            # its hello (models, context lengths) will be the engine's real ones.
            await request.reject(503, body=b"the worker's engine is not ready")
            return
        ws = await request.accept()
        self.metrics.connections.inc()
        try:
            await self._serve_connection(ws, peer)
        finally:
            self.metrics.connections.dec()

    async def _serve_connection(self, ws: WebSocketConnection, peer: str) -> None:
        """One gateway's connection. However it ends, only this connection's generations
        end with it: nothing a gateway does takes the worker down."""
        generations: dict[str, _Generation] = {}
        try:
            await ws.send_message(
                protocol.encode(
                    Hello(
                        self.worker_id,
                        self.engine.models,
                        self.config.max_inflight,
                        streams_unary=self.engine.streams_unary,
                        context_lengths=dict(self.engine.context_lengths),
                    )
                )
            )
            outbox, outgoing = trio.open_memory_channel[Outbound](math.inf)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_load, ws)
                nursery.start_soon(_write, ws, outgoing)
                try:
                    await self._read(ws, nursery, generations, outbox)
                finally:
                    nursery.cancel_scope.cancel()  # the gateway is gone: stop everything
        except* ConnectionClosed:
            log.info("gateway %s disconnected", peer)
        except* ProtocolError as group:
            log.error("gateway %s sent a broken frame, closing: %s", peer, group.exceptions[0])
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.aclose(code=1002, reason="protocol error")
        except* Exception:
            log.exception("connection from gateway %s failed", peer)

    async def _read(
        self,
        ws: WebSocketConnection,
        nursery: trio.Nursery,
        generations: dict[str, _Generation],
        outbox: trio.MemorySendChannel[Outbound],
    ) -> None:
        while True:
            try:
                message = protocol.decode(await ws.get_message())
            except ProtocolError as error:
                if error.request_id is None:
                    raise
                log.error("bad frame for request %s: %s", error.request_id, error)
                await _send_error(ws, error.request_id, internal_error(f"bad frame: {error}"))
                continue
            if isinstance(message, Generate):
                if not self.shutdown.accepting or len(generations) >= self.config.max_inflight:
                    reason = "draining" if not self.shutdown.accepting else "full"
                    await ws.send_message(
                        protocol.encode(
                            ErrorFrame(
                                message.id,
                                f"worker {self.worker_id} is {reason}",
                                "unavailable",
                                reason,
                                503,
                            )
                        )
                    )
                    continue
                nursery.start_soon(self._generate, outbox, message, generations)
            elif isinstance(message, Credit):
                generation = generations.get(message.id)
                if generation is not None:
                    generation.credit.give(message.n)
            elif isinstance(message, Cancel):
                generation = generations.get(message.id)
                if generation is not None:
                    generation.flight.cancel(CLIENT_DISCONNECTED)
                    # Wall-clock stamp: benchmarks/worker_path.py measures disconnect → cancel.
                    log.debug(
                        "request %s: cancelled by the gateway at %.6f", message.id, time.time()
                    )
            elif isinstance(message, OpenSession):
                reply = await self._open_session(message)
                await ws.send_message(protocol.encode(reply))
            elif isinstance(message, CloseSession):
                await self._close_session(message.session_id)
                await ws.send_message(protocol.encode(SessionReply(message.id, "ok")))
            else:
                log.warning("unexpected %s frame from the gateway ignored", type(message).__name__)

    async def _open_session(self, message: OpenSession) -> SessionReply:
        if not self.shutdown.accepting:
            return SessionReply(message.id, "error", f"worker {self.worker_id} is draining")
        if self.sessions.get(message.session_id) is None:
            try:
                await self.engine.open_session(message.session_id, message.timeout)
            except GatewayError as error:
                return SessionReply(message.id, "error", error.message)
            self.sessions.open(message.session_id, "", message.timeout, trio.current_time())
            self.metrics.sessions_active.set(len(self.sessions))
            self._rearm_reaper()
        return SessionReply(message.id, "ok")

    async def _close_session(self, session_id: str) -> None:
        if self.sessions.remove(session_id) is not None:
            await self.engine.close_session(session_id)
            self.metrics.sessions_active.set(len(self.sessions))

    async def reap_sessions(self) -> None:
        """The worker's own expiry: timeout + grace past last use (the gateway closes first)."""
        while True:
            with trio.CancelScope(deadline=self.sessions.next_expiry()) as self._reaper_sleep:
                await trio.sleep_forever()
            self._reaper_sleep = None
            for session in self.sessions.pop_expired(trio.current_time()):
                log.info("session %s expired on the worker", session.session_id)
                await self.engine.close_session(session.session_id)
            self.metrics.sessions_active.set(len(self.sessions))

    def _rearm_reaper(self) -> None:
        if self._reaper_sleep is not None:
            self._reaper_sleep.deadline = self.sessions.next_expiry()

    async def _generate(
        self,
        outbox: trio.MemorySendChannel[Outbound],
        frame: Generate,
        generations: dict[str, _Generation],
    ) -> None:
        request = frame.request
        request_id_var.set(request.trace_id or frame.id)  # this task's log lines
        session = self.sessions.get(frame.session_id) if frame.session_id else None
        if session is not None:
            request = dataclasses.replace(request, session_id=frame.session_id)
            frame = dataclasses.replace(frame, request=request)
            self.sessions.begin(session)
        flight = Flight(frame.id, request.model, request.endpoint, trio.current_time())
        generation = _Generation(flight, CreditWindow(frame.window))
        generations[frame.id] = generation
        self.ledger.add(flight)
        self.metrics.active.inc()
        outcome = "cancelled"
        try:
            with flight.scope:
                await self._stream(outbox, frame, generation)
                outcome = "finished"
            if flight.cancel_reason == SHUTDOWN:
                outbox.send_nowait(_error_frame(frame.id, shut_down()))
        except GatewayError as error:
            outcome = "error"
            outbox.send_nowait(_error_frame(frame.id, error))
        except trio.Cancelled:
            if flight.cancel_reason is None:
                flight.cancel_reason = "connection_lost"
            raise
        finally:
            if session is not None:
                self.sessions.end(session, trio.current_time())
                self._rearm_reaper()
            del generations[frame.id]
            self.ledger.remove(flight)
            flight.done.set()
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            if flight.cancel_reason is not None:
                self.metrics.cancellations.labels(flight.cancel_reason).inc()

    async def _stream(
        self,
        outbox: trio.MemorySendChannel[Outbound],
        frame: Generate,
        generation: _Generation,
    ) -> None:
        """Engine → local channel → the connection's outbox, each chunk against one credit."""
        send, receive = trio.open_memory_channel[Chunk](max(1, frame.window))
        failure: GatewayError | None = None

        async def produce() -> None:
            nonlocal failure
            with send:
                try:
                    await self.engine.generate(frame.request, send)
                except GatewayError as error:
                    failure = error
                except Exception:
                    log.exception("engine failed on request %s", frame.id)
                    failure = internal_error()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            with receive:
                async for chunk in receive:
                    await generation.credit.take()
                    outbox.send_nowait(
                        ChunkFrame(
                            frame.id,
                            chunk.payload.decode(),
                            chunk.tokens,
                            chunk.finish_reason,
                            chunk.prompt_tokens,
                        )
                    )
        if failure is not None:
            raise failure
        outbox.send_nowait(End(frame.id))

    async def _report_load(self, ws: WebSocketConnection) -> None:
        while True:
            await ws.send_message(protocol.encode(Load(len(self.ledger), 0)))
            await trio.sleep(self.config.load_interval_s)


Outbound = ChunkFrame | End | ErrorFrame


async def _write(ws: WebSocketConnection, outgoing: trio.MemoryReceiveChannel[Outbound]) -> None:
    """The connection's one writer: whatever is queued goes out together, consecutive
    chunks (of any requests) as one `chunks` frame, in order per request."""
    async for first in outgoing:
        queued: list[Outbound] = [first]
        while True:
            try:
                queued.append(outgoing.receive_nowait())
            except trio.WouldBlock:
                break
        chunks: list[ChunkFrame] = []
        for message in queued:
            if isinstance(message, ChunkFrame):
                chunks.append(message)
                continue
            await _send_chunks(ws, chunks)
            chunks = []
            await ws.send_message(protocol.encode(message))
        await _send_chunks(ws, chunks)


async def _send_chunks(ws: WebSocketConnection, chunks: list[ChunkFrame]) -> None:
    if len(chunks) == 1:
        await ws.send_message(protocol.encode(chunks[0]))
    elif chunks:
        await ws.send_message(protocol.encode(Chunks(tuple(chunks))))


def shut_down() -> GatewayError:
    return GatewayError(ErrorKind.SHUTDOWN, "the worker shut down")


def _error_frame(request_id: str, error: GatewayError) -> ErrorFrame:
    status, type_, code = wire_fields(error)
    return ErrorFrame(request_id, error.message, type_, code, status, error.counts_against_backend)


async def _send_error(ws: WebSocketConnection, request_id: str, error: GatewayError) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send_message(protocol.encode(_error_frame(request_id, error)))
