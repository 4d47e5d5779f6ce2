"""A remote worker as an engine: one WebSocket, many requests multiplexed on it.

The worker plane as a whole (handshake, frames, credits, cancel, reconnect) is
docs/architecture.md §3.

`run` dials the worker, checks its `hello`, reads frames and hands each to its request's
inbox, and redials with backoff when the connection goes; while it is down the worker is
quarantined (`available` False) and every request on it fails at once. `generate` sends
`generate`, passes chunks on, returns credit as the response writer takes them (so a slow
client slows the worker, across the network), and on the way out without an end, sends
`cancel` from a shielded, deadlined cleanup.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from trio_gateway.errors import unavailable
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.plane.codec import ProtocolError, decode, encode
from trio_gateway.plane.errors import worker_error
from trio_gateway.plane.frames import (
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
    Message,
    OpenSession,
    SessionReply,
)
from trio_gateway.plane.handshake import MAX_MESSAGE_BYTES, opening_headers

log = logging.getLogger("trio_gateway.ws_client")

CANCEL_DEADLINE_S = 1.0
SESSION_CALL_TIMEOUT_S = 5.0
HELLO_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class _Lost:
    reason: str


_Inbound = ChunkFrame | End | ErrorFrame | _Lost


@dataclass(eq=False)
class _Stream:
    send: trio.MemorySendChannel[_Inbound]
    receive: trio.MemoryReceiveChannel[_Inbound]
    window: int

    @classmethod
    def open(cls, window: int) -> _Stream:
        # Unbounded, but the worker may have at most `window` chunks unacknowledged: the
        # reader never blocks on one slow request (no head-of-line blocking).
        send, receive = trio.open_memory_channel[_Inbound](math.inf)
        return cls(send, receive, window)


@dataclass(eq=False)
class _SessionCall:
    answered: trio.Event = field(default_factory=trio.Event)
    reply: SessionReply | None = None


@dataclass(eq=False)
class RemoteWorker:
    url: str
    token: str | None = None
    window: int = 32
    connect_timeout: float = 5.0
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    backoff_max: float = 5.0
    worker_id: str | None = None
    # The name `url`'s address was resolved from (a `dns+` member): the handshake's Host,
    # and the name a wss:// worker's certificate is checked against.
    host_name: str | None = None
    models: tuple[str, ...] = ()
    capacity: int | None = None
    available: bool = False
    streams_unary: bool = True
    keeps_session_history: bool = False
    endpoints: tuple[str, ...] = ()  # what its hello says its engine answers
    context_lengths: dict[str, int] = field(default_factory=dict)
    connections: int = 0  # how many times a hello was accepted
    # Called when the worker says hello: the router lets queued requests look again.
    on_available: Callable[[], None] | None = None
    # For wss:// (None: the system's trust store); hostname verification stays on.
    ssl_context: ssl.SSLContext | None = None
    _ws: WebSocketConnection | None = None
    _streams: dict[str, _Stream] = field(default_factory=dict)
    _session_calls: dict[str, _SessionCall] = field(default_factory=dict)
    _connected: trio.Event = field(default_factory=trio.Event)

    @property
    def name(self) -> str:
        return self.worker_id or self.url

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # the gateway starts even while a worker is down
        backoff = 0.1
        while True:
            # However a connection ends, the gateway goes on: this worker is redialled.
            try:
                await self._connect_once()
                backoff = 0.1
            except* (
                OSError,
                HandshakeError,
                ConnectionClosed,
                trio.TooSlowError,
                trio.BrokenResourceError,  # a TLS handshake refused, either way
            ) as group:
                log.warning("worker %s: %s", self.url, _describe(group.exceptions[0]))
            except* ProtocolError as group:
                log.error(
                    "worker %s: protocol error, closing the connection: %s",
                    self.url,
                    group.exceptions[0],
                )
            except* Exception:
                log.exception("worker %s: connection failed", self.url)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _connect_once(self) -> None:
        async with self.open_connection(opening_headers(self.token)) as ws:
            with trio.fail_after(HELLO_TIMEOUT_S):
                hello = decode(await ws.get_message())
            if not isinstance(hello, Hello):
                raise ProtocolError(f"expected hello, got {type(hello).__name__}")
            if hello.protocol != PROTOCOL_VERSION:
                log.error(
                    "worker %s speaks protocol %d, this gateway %d: not using it",
                    self.url,
                    hello.protocol,
                    PROTOCOL_VERSION,
                )
                await ws.aclose(code=1002, reason="protocol version mismatch")
                raise ProtocolError("protocol version mismatch")
            self.worker_id, self.models = hello.worker_id, hello.models
            self.capacity = hello.max_inflight
            self.streams_unary, self.context_lengths = hello.streams_unary, hello.context_lengths
            self.keeps_session_history = hello.keeps_session_history
            self.endpoints = hello.endpoints
            self._ws = ws
            self.available = True
            self.connections += 1
            self._connected.set()
            if self.on_available is not None:
                self.on_available()
            log.info("worker %s (%s) connected: models %s", self.worker_id, self.url, self.models)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_alive, ws)
                    await self._read(ws)
                    nursery.cancel_scope.cancel()
            finally:
                self.available = False
                self._ws = None
                self._connected = trio.Event()
                self._fail_all("the connection to the worker closed")

    def open_connection(
        self, headers: list[tuple[bytes, bytes]]
    ) -> AbstractAsyncContextManager[WebSocketConnection]:
        """The WebSocket to the worker; tests put an in-memory one here."""
        return self._dial(headers)

    @asynccontextmanager
    async def _dial(self, headers: list[tuple[bytes, bytes]]) -> AsyncIterator[WebSocketConnection]:
        """Like trio-websocket's `open_websocket_url`, but the TCP stream is closed on every
        way out, a handshake cut short included (that path leaked sockets)."""
        url = urlsplit(self.url)
        if url.scheme not in ("ws", "wss") or url.hostname is None:
            raise OSError(f"unsupported worker URL {self.url!r}: expected ws(s)://HOST:PORT")
        port = url.port or (443 if url.scheme == "wss" else 80)
        stream: trio.abc.Stream
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(url.hostname, port)
            stream = tcp
            if url.scheme == "wss":
                stream = trio.SSLStream(
                    tcp,
                    self.ssl_context or ssl.create_default_context(),
                    server_hostname=self.host_name or url.hostname,
                    https_compatible=True,
                )
                try:
                    # Here, so that a certificate refused is a failed dial, said as one.
                    await stream.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self.connect_timeout):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        f"{self.host_name or url.hostname}:{port}",
                        url.path or "/",
                        extra_headers=headers,
                        max_message_size=MAX_MESSAGE_BYTES,
                    )
                try:
                    yield ws
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # callers catch the bare error, as from trio-websocket
                raise group.exceptions[0] from None
            raise
        finally:
            await trio.aclose_forcefully(stream)

    async def _keep_alive(self, ws: WebSocketConnection) -> None:
        """A worker that stops answering pings is as good as gone: close and redial."""
        while True:
            await trio.sleep(self.ping_interval)
            with trio.move_on_after(self.ping_timeout) as waited:
                await ws.ping()
            if waited.cancelled_caught:
                log.warning("worker %s: no pong within %g s", self.name, self.ping_timeout)
                await ws.aclose(code=1011, reason="ping timeout")
                return

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                message = decode(await ws.get_message())
            except ConnectionClosed:
                return
            except ProtocolError as error:
                if error.request_id is None:
                    raise
                log.error(
                    "worker %s: bad frame for request %s: %s", self.name, error.request_id, error
                )
                stream = self._streams.get(error.request_id)
                if stream is not None:
                    stream.send.send_nowait(_Lost(f"the worker sent a bad frame: {error}"))
                continue
            if isinstance(message, Chunks):
                for item in message.items:
                    self._deliver(item)
            elif isinstance(message, ChunkFrame | End | ErrorFrame):
                self._deliver(message)
            elif isinstance(message, SessionReply):
                call = self._session_calls.get(message.id)
                if call is not None:
                    call.reply = message
                    call.answered.set()
            else:
                log.warning(
                    "worker %s: unexpected %s frame ignored", self.name, type(message).__name__
                )

    def _deliver(self, message: ChunkFrame | End | ErrorFrame) -> None:
        stream = self._streams.get(message.id)
        if stream is not None:  # else: a request already gone (cancelled, failed)
            stream.send.send_nowait(message)

    def _fail_all(self, reason: str) -> None:
        for stream in self._streams.values():
            stream.send.send_nowait(_Lost(reason))
        for call in self._session_calls.values():
            call.answered.set()  # no reply: the caller reports the worker lost

    async def open_session(self, session_id: str, idle_timeout_s: float) -> None:
        reply = await self._session_call(
            lambda call_id: OpenSession(call_id, session_id, idle_timeout_s)
        )
        if reply.status != "ok":
            raise unavailable(
                f"Worker {self.name} refused session {session_id!r}: {reply.message or 'no reason'}"
            )

    async def close_session(self, session_id: str) -> None:
        await self._session_call(lambda call_id: CloseSession(call_id, session_id))

    async def _session_call(
        self, make: Callable[[str], OpenSession | CloseSession]
    ) -> SessionReply:
        ws = self._ws
        if ws is None:
            raise unavailable(f"Worker {self.name} is not connected.")
        call_id = uuid.uuid4().hex
        call = self._session_calls[call_id] = _SessionCall()
        try:
            with trio.fail_after(SESSION_CALL_TIMEOUT_S):
                try:
                    await ws.send_message(encode(make(call_id)))
                except ConnectionClosed:
                    raise unavailable(f"Worker {self.name} is gone.") from None
                await call.answered.wait()
        except trio.TooSlowError:
            raise unavailable(f"Worker {self.name} did not answer a session call.") from None
        finally:
            del self._session_calls[call_id]
        if call.reply is None:
            raise unavailable(f"Worker {self.name} was lost during a session call.")
        return call.reply

    async def generate(
        self, request: GenerationRequest, send: trio.MemorySendChannel[Chunk]
    ) -> None:
        ws = self._ws
        if ws is None:
            raise unavailable(f"Worker {self.name} is not connected.", retryable=True)
        if request.endpoint not in self.endpoints:
            # An older worker: another backend may serve it; not a fault of this one.
            raise unavailable(
                f"Worker {self.name} does not serve {request.endpoint} (it predates it).",
                retryable=True,
                request_only=True,
            )
        rid = request.request_id
        stream = _Stream.open(self.window)
        self._streams[rid] = stream
        produced = ended = False
        try:
            try:
                generate = Generate(rid, request, self.window, request.session_id)
                await ws.send_message(encode(generate))
            except ConnectionClosed:
                ended = True
                raise unavailable(f"Worker {self.name} is gone.", retryable=True) from None
            unacknowledged = 0
            credit_every = max(1, self.window // 2)
            while True:
                message = await stream.receive.receive()
                while True:
                    if isinstance(message, ChunkFrame):
                        produced = True
                        # No checkpoint while there is room: every chunk already here
                        # reaches the response writer before it wakes, as one write.
                        try:
                            send.send_nowait(message.chunk())
                        except trio.WouldBlock:
                            await send.send(message.chunk())
                        if message.finish_reason is not None:
                            ended = True  # the worker follows with `end`: nothing to cancel
                            return
                        unacknowledged += 1
                    elif isinstance(message, End):
                        ended = True
                        return
                    elif isinstance(message, ErrorFrame):
                        ended = True
                        raise worker_error(message, retryable=not produced)
                    else:
                        ended = True
                        raise unavailable(
                            f"Worker {self.name} lost: {message.reason}.", retryable=not produced
                        )
                    try:
                        message = stream.receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                if unacknowledged >= credit_every:
                    await self._send_quietly(ws, Credit(rid, unacknowledged))
                    unacknowledged = 0
        finally:
            del self._streams[rid]
            if not ended and self._ws is ws:
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + CANCEL_DEADLINE_S
                    await self._send_quietly(ws, Cancel(rid))

    async def _send_quietly(self, ws: WebSocketConnection, message: Message) -> None:
        """A send on a connection that may be closing; the reader notices the close."""
        with contextlib.suppress(ConnectionClosed):
            await ws.send_message(encode(message))


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRejected):
        body = (error.body or b"").decode(errors="replace").strip()
        return f"handshake refused with {error.status_code}: {body or 'no reason given'}"
    if isinstance(error, HandshakeError) and error.__cause__ is not None:
        return f"cannot connect: {error.__cause__}"
    if isinstance(error, trio.TooSlowError):
        return "no hello in time"
    if isinstance(error, trio.BrokenResourceError) and error.__cause__ is not None:
        return f"TLS handshake failed: {error.__cause__}"
    return f"{type(error).__name__}: {error}"
