"""A lean streaming HTTP/1.1 client for one upstream origin (vLLM, llama.cpp), on trio streams.

httpx cost the gateway too much CPU relaying SSE (the figures are in the README): five async
generators and h11 on every socket read, and httpcore's pool walking every connection on
every request. Here a body read is one `await stream.receive_some()` and one pass of a
small decoder; the pool is a stack of idle connections, so nothing is O(connections).

h11 writes the request and parses the response head (the part where its strictness pays);
the body is framed by `framing.py`. A fresh `h11.Connection` serves each request, so reuse
is decided here with h11's own rules: the request was sent, the body read to its end with
nothing after it, HTTP/1.1, and no `Connection: close` on either side.

    pool = UpstreamPool("http://127.0.0.1:8000")
    async with pool.stream("POST", "/v1/chat/completions", headers, body) as response:
        while chunk := await response.receive_some():
            ...
    await pool.aclose()

Leaving the `async with` before the body ended (an exception, a cancellation, an early
`break`) closes the connection at once, without awaiting anything: vLLM and llama.cpp abort
the generation when they see it.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

import h11
import trio

from trio_gateway.engines.upstream.client.connection import Connection
from trio_gateway.engines.upstream.client.errors import (
    StaleConnection,
    UpstreamConnectError,
    UpstreamDisconnected,
    innermost_reason,
)
from trio_gateway.engines.upstream.client.response import UpstreamResponse

# Below the 5 s idle timeout of uvicorn (vLLM) and cpp-httplib (llama.cpp): reusing a
# connection the server is closing at that moment fails the request before any response.
KEEPALIVE_EXPIRY = 4.0
# A kept-alive connection the server closes just as it is reused fails before any byte of a
# response (the server never handled the request): it is sent again, at most this many times.
STALE_RETRIES = 2

_RESERVED_HEADERS = frozenset((b"host", b"content-length", b"transfer-encoding"))
_NO_BODY_METHODS = frozenset((b"GET", b"HEAD"))


class StreamContext:
    """`async with pool.stream(...) as response`: a class, not `@asynccontextmanager`.

    On Python 3.11 a frozen dataclass exception cannot cross a generator-based context
    manager (contextlib sets its `__traceback__`); this one lets every exception through
    untouched, whatever the exception.
    """

    __slots__ = (
        "_entered",
        "_head_only",
        "_keep_alive",
        "_parser",
        "_pool",
        "_request",
        "_response",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        request: bytes,
        parser: h11.Connection,
        head_only: bool,
        keep_alive: bool,
    ) -> None:
        self._pool = pool
        self._request = request
        self._parser = parser
        self._head_only = head_only
        self._keep_alive = keep_alive
        self._response: UpstreamResponse | None = None
        self._entered = False

    async def __aenter__(self) -> UpstreamResponse:
        if self._entered:
            raise RuntimeError("a StreamContext can be entered once")
        self._entered = True
        self._response = await self._pool._send(
            self._request, self._parser, self._head_only, self._keep_alive
        )
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        response, self._response = self._response, None
        if response is not None:
            self._pool._release(response.connection, exc_type is None and response.reusable())


class UpstreamPool:
    """Connections to one origin: idle ones on a stack (LIFO), none watched in the background.

    A connection goes back to the stack only when its response was read to the end; past
    `keepalive_expiry` idle it is closed rather than reused, when next seen (a request or a
    release): the pool holds no task, so an idle pool keeps at most `max_idle` sockets until
    then or `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_idle: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if (
            url.scheme not in ("http", "https")
            or not url.hostname
            or url.path not in ("", "/")
            or url.query
            or url.fragment
            or url.username is not None
        ):
            raise ValueError(f"an upstream origin is http(s)://host[:port], got {base_url!r}")
        default_port = 443 if url.scheme == "https" else 80
        self.host = url.hostname
        self.port = url.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = f"{url.scheme}://{host}:{self.port}"
        authority = host if self.port == default_port else f"{host}:{self.port}"
        self._host_header = authority.encode("ascii" if authority.isascii() else "idna")
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._idle: deque[Connection] = deque()  # oldest left, most recently used right
        self._busy: set[Connection] = set()  # carrying a response
        self._closed = False
        self.connections_opened = 0
        self.stale_retries = 0  # requests sent again after a server closed a reused connection

    def __repr__(self) -> str:
        return f"UpstreamPool({self.origin!r}, idle={len(self._idle)})"

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection, those in use too: a response being read fails at once
        with `UpstreamDisconnected` (an engine that stops ends its streams)."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        while self._busy:
            self._busy.pop().close()
        await trio.lowlevel.checkpoint()

    def stream(
        self,
        method: bytes | str,
        target: bytes | str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> StreamContext:
        """Send one request; the response is the context's value once its head arrived.

        `Host` and `Content-Length` are the pool's to set (ValueError if given), as is the
        framing: the body is sent whole, with its length.
        """
        method_bytes = method.encode("ascii") if isinstance(method, str) else method
        keep_alive = True
        for name, value in headers:
            lowered = name.lower()
            if lowered in _RESERVED_HEADERS:
                raise ValueError(f"the pool sets the {name.decode('latin-1')} header itself")
            if lowered == b"connection" and b"close" in value.lower():
                keep_alive = False
        all_headers = [(b"host", self._host_header), *headers]
        if body or method_bytes not in _NO_BODY_METHODS:
            all_headers.append((b"content-length", b"%d" % len(body)))
        # One h11 connection per request: it writes the request here and parses the response
        # head later (the body is ours to frame, so h11 never reaches DONE to start a cycle).
        # A stale connection's retry reuses it: nothing was received on the failed attempt.
        parser = h11.Connection(h11.CLIENT)
        try:
            parts = [
                parser.send(h11.Request(method=method_bytes, target=target, headers=all_headers))
            ]
            if body:
                parts.append(parser.send(h11.Data(data=body)))
            parts.append(parser.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as error:
            raise ValueError(f"not a valid HTTP request: {error}") from None
        request = b"".join(part for part in parts if part)
        return StreamContext(self, request, parser, method_bytes == b"HEAD", keep_alive)

    # -- internals -------------------------------------------------------------------------

    async def _send(
        self, request: bytes, parser: h11.Connection, head_only: bool, keep_alive: bool
    ) -> UpstreamResponse:
        if self._closed:
            raise trio.ClosedResourceError("the upstream pool is closed")
        attempt = 0
        while True:
            conn = self._checkout()
            if conn is None:
                conn = await self._connect()
            try:
                head, leftover = await conn.exchange(request, parser, self.origin)
                response = UpstreamResponse.from_head(conn, head, leftover, head_only, keep_alive)
                self._busy.add(conn)
                return response
            except StaleConnection as stale:
                conn.close()
                if not conn.reused or attempt == STALE_RETRIES:
                    raise UpstreamDisconnected(
                        f"the upstream closed the connection before answering ({stale})"
                    ) from None
                attempt += 1
                self.stale_retries += 1
            except BaseException:
                conn.close()
                raise

    def _checkout(self) -> Connection | None:
        """The most recently used live idle connection, closing the expired and the dead."""
        idle = self._idle
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if conn.expires <= now:  # the stack is ordered by expiry: all below are older
                conn.close()
                while idle:
                    idle.pop().close()
                return None
            if not conn.looks_closed():
                return conn
            conn.close()
        return None

    def _release(self, conn: Connection, reusable: bool) -> None:
        self._busy.discard(conn)
        if not reusable or self._closed:
            conn.close()
            return
        idle = self._idle
        now = trio.current_time()
        while idle and (idle[0].expires <= now or len(idle) >= self.max_idle):
            idle.popleft().close()
        if self.max_idle <= 0:
            conn.close()
            return
        conn.expires = now + self.keepalive_expiry
        conn.reused = True
        idle.append(conn)

    async def _connect(self) -> Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(self.host, self.port)
                self.connections_opened += 1
                if self._ssl is None:
                    return Connection(tcp, tcp.socket)
                tls = trio.SSLStream(
                    tcp, self._ssl, server_hostname=self.host, https_compatible=True
                )
                try:
                    await tls.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
                return Connection(tls, tcp.socket)
        except trio.TooSlowError:
            raise UpstreamConnectError(
                f"connecting to {self.origin} timed out after {self.connect_timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError) as error:
            raise UpstreamConnectError(
                f"could not connect to {self.origin}: {innermost_reason(error)}"
            ) from error
