"""A lean streaming HTTP/1.1 client for one upstream origin (vLLM, llama.cpp), on trio streams.

httpx cost the gateway too much CPU relaying SSE (the figures are in the README): five async
generators and h11 on every socket read, and httpcore's pool walking every connection on
every request. Here a body read is one `await stream.receive_some()` and one pass of a
small decoder; the pool is a stack of idle connections, so nothing is O(connections).

h11 writes the request and parses the response head (the part where its strictness pays);
the body is framed by the decoders below: h11's chunked reader costs several times
`_ChunkedBody`'s, on a path that runs once per SSE event (benchmarks/upstream_client.py). A
fresh `h11.Connection` serves each request, so reuse is decided here with h11's own rules:
the request was sent, the body read to its end with nothing after it, HTTP/1.1, and no
`Connection: close` on either side.

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

import os
import re
import select
import ssl
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

import h11
import trio

# Below the 5 s idle timeout of uvicorn (vLLM) and cpp-httplib (llama.cpp): reusing a
# connection the server is closing at that moment fails the request before any response.
KEEPALIVE_EXPIRY = 4.0
# A kept-alive connection the server closes just as it is reused fails before any byte of a
# response (the server never handled the request): it is sent again, at most this many times.
STALE_RETRIES = 2
READ_SIZE = 64 * 1024
# A chunk-size or trailer line longer than this is a broken upstream.
MAX_LINE = 16 * 1024

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")
_RESERVED_HEADERS = frozenset((b"host", b"content-length", b"transfer-encoding"))
_NO_BODY_METHODS = frozenset((b"GET", b"HEAD"))
_HAS_POLL = hasattr(select, "poll")


class UpstreamError(Exception):
    """Any failure of the upstream exchange; the gateway classifies the subclasses."""


class UpstreamConnectError(UpstreamError):
    """No connection: DNS, refused, connect timeout, TLS handshake. The request was not sent."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not HTTP/1.1 we can read."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed or reset mid-response, or before any response on a new one."""


class _Stale(Exception):
    """Closed or reset before any byte of a response: if reused, the server closed it idle."""


def _reason(error: BaseException) -> str:
    """The innermost cause's message: trio wraps the OSError or SSLError that says what failed."""
    while True:
        if isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            return str(error) or type(error).__name__


# -- body framing (sans-IO) ------------------------------------------------------------------


class _Body:
    """One response body's framing: `feed` socket bytes, get body bytes back."""

    __slots__ = ("done", "extra")

    def __init__(self) -> None:
        self.done = False
        self.extra = False  # bytes came after the body's end: the connection is not reusable

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def eof(self) -> None:
        """The peer closed: the end of the body, or an error if the framing wanted more."""
        if not self.done:
            raise UpstreamDisconnected("the upstream closed the connection mid-body")


class _LengthBody(_Body):
    __slots__ = ("_remaining",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self._remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            return data
        self._remaining = 0
        self.done = True
        if len(data) > remaining:
            self.extra = True
            return data[:remaining]
        return data


class _CloseBody(_Body):
    """No length and not chunked: the body is everything until the server closes."""

    __slots__ = ()

    def feed(self, data: bytes) -> bytes:
        return data

    def eof(self) -> None:
        self.done = True


_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class _ChunkedBody(_Body):
    """`Transfer-Encoding: chunked`, as strict as h11 0.16 (CRLF after each chunk's data)."""

    __slots__ = ("_pending", "_remaining", "_state")

    def __init__(self) -> None:
        super().__init__()
        self._pending = b""  # an incomplete size line, CRLF or trailer line
        self._remaining = 0  # of the current chunk's data
        self._state = _SIZE

    def feed(self, data: bytes) -> bytes:
        if self._pending:
            data = self._pending + data
            self._pending = b""
        parts: list[bytes] = []
        state = self._state
        pos = 0
        end = len(data)
        while pos < end:
            if state == _DATA:
                take = min(self._remaining, end - pos)
                parts.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state = _CRLF
            elif state == _CRLF:
                if end - pos < 2:
                    if data[pos:] != b"\r":
                        raise UpstreamProtocolError("malformed chunked body: no CRLF after a chunk")
                    self._pending = data[pos:]
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise UpstreamProtocolError("malformed chunked body: no CRLF after a chunk")
                pos += 2
                state = _SIZE
            elif state == _SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._keep(data, pos)
                    break
                match = _CHUNK_SIZE.fullmatch(data, pos, eol)
                if match is None:
                    raise UpstreamProtocolError(
                        f"malformed chunk header {data[pos:eol][:40]!r}"
                    ) from None
                size = int(match[1], 16)
                pos = eol + 2
                if size:
                    self._remaining = size
                    state = _DATA
                else:
                    state = _TRAILER
            else:  # trailer fields, ignored, up to the blank line that ends the body
                eol = data.find(b"\n", pos)
                if eol < 0:
                    self._keep(data, pos)
                    break
                blank = eol == pos or (eol == pos + 1 and data[pos] == 0x0D)
                pos = eol + 1
                if blank:
                    self.done = True
                    self.extra = pos < end
                    break
        self._state = state
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _keep(self, data: bytes, pos: int) -> None:
        if len(data) - pos > MAX_LINE:
            raise UpstreamProtocolError("malformed chunked body: an over-long line")
        self._pending = data[pos:]


# -- connections and responses ---------------------------------------------------------------


class _Connection:
    __slots__ = ("expires", "plain", "reused", "socket", "stream")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.plain = not isinstance(stream, trio.SSLStream)
        self.expires = 0.0
        self.reused = False

    async def receive_some(self) -> bytes:
        """One read. On plain TCP it waits first, then reads: a stream's next event is
        never there yet when the last one was just read, so trio's own try-then-wait
        would make a failed `recv` per read (and its exception)."""
        if not self.plain:
            return bytes(await self.stream.receive_some(READ_SIZE))
        fd = self.socket.fileno()
        while True:
            await trio.lowlevel.wait_readable(self.socket)
            try:
                return os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as error:
                raise trio.BrokenResourceError(str(error)) from error

    def close(self) -> None:
        """Close the socket now, no await: safe when cancelled, in `__aexit__`, anywhere.

        The same as `trio.aclose_forcefully` on these streams (the TLS stream is
        https-compatible: no close_notify), without its checkpoint.
        """
        self.socket.close()

    def looks_closed(self) -> bool:
        """Readable while idle: the server closed it (or sent junk). One poll, no await."""
        fd = self.socket.fileno()
        if fd < 0:
            return True
        if not _HAS_POLL:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))


class UpstreamResponse:
    """A response whose head was read; the body is read with `receive_some` or `read`."""

    __slots__ = (
        "_body",
        "_buffered",
        "_conn",
        "_keep_alive",
        "_leftover",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: _Body,
        keep_alive: bool,
        leftover: bytes,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names lowercased, in the order received
        self._conn = conn
        self._body = body
        self._buffered = b""  # body bytes decoded but not yet returned
        self._leftover = leftover  # bytes read with the head, not yet decoded
        self._keep_alive = keep_alive

    def __repr__(self) -> str:
        return f"UpstreamResponse({self.status}, complete={self.complete})"

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (names are case-insensitive), None if absent."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        """The body was read to its end (then the connection can serve another request)."""
        return self._body.done and not self._buffered and not self._leftover

    def _reusable(self) -> bool:
        return self._keep_alive and self.complete and not self._body.extra

    async def receive_some(self) -> bytes:
        """The body bytes of one socket read (never empty), or b"" once the body ended.

        One await per socket read: a read holding only framing (a chunk terminator) is
        followed by the next read within the call.
        """
        body = self._body
        if self._buffered or self._leftover or body.done:
            return await self._receive_held()
        conn = self._conn
        while True:
            try:
                received = await conn.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise UpstreamDisconnected(
                    f"the connection to the upstream failed mid-body ({_reason(error)})"
                ) from error
            if not received:
                body.eof()
                return b""
            data = body.feed(received)
            if data or body.done:
                return data

    async def _receive_held(self) -> bytes:
        """What came with the head or past a `read` limit, before any socket read."""
        await trio.lowlevel.checkpoint()
        if self._buffered:
            data, self._buffered = self._buffered, b""
            return data
        if self._leftover:  # decoded here, so its errors are the body's, like any read's
            leftover, self._leftover = self._leftover, b""
            data = self._body.feed(leftover)
            if not data and not self._body.done:
                return await self.receive_some()
            return data
        return b""

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error page, a unary JSON answer).

        Bytes past `limit` are kept for the next read, not lost.
        """
        data = bytearray()
        while len(data) < limit:
            chunk = await self.receive_some()
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            self._buffered = bytes(data[limit:])
            del data[limit:]
        return bytes(data)


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
            self._pool._release(response._conn, exc_type is None and response._reusable())


# -- the pool --------------------------------------------------------------------------------


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
        self._idle: deque[_Connection] = deque()  # oldest left, most recently used right
        self._busy: set[_Connection] = set()  # carrying a response
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
                response = await self._exchange(conn, request, parser, head_only, keep_alive)
                self._busy.add(conn)
                return response
            except _Stale as stale:
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

    def _checkout(self) -> _Connection | None:
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

    def _release(self, conn: _Connection, reusable: bool) -> None:
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

    async def _connect(self) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(self.host, self.port)
                self.connections_opened += 1
                if self._ssl is None:
                    return _Connection(tcp, tcp.socket)
                tls = trio.SSLStream(
                    tcp, self._ssl, server_hostname=self.host, https_compatible=True
                )
                try:
                    await tls.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
                return _Connection(tls, tcp.socket)
        except trio.TooSlowError:
            raise UpstreamConnectError(
                f"connecting to {self.origin} timed out after {self.connect_timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError) as error:
            raise UpstreamConnectError(
                f"could not connect to {self.origin}: {_reason(error)}"
            ) from error

    async def _exchange(
        self,
        conn: _Connection,
        request: bytes,
        parser: h11.Connection,
        head_only: bool,
        keep_alive: bool,
    ) -> UpstreamResponse:
        stream = conn.stream
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError as error:
            raise _Stale(_reason(error)) from error
        received = False
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as error:
                raise UpstreamProtocolError(
                    f"malformed response from {self.origin}: {error}"
                ) from error
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except trio.BrokenResourceError as error:
                    if not received:
                        raise _Stale(_reason(error)) from error
                    raise UpstreamDisconnected(
                        f"the connection to {self.origin} failed mid-head ({_reason(error)})"
                    ) from error
                if not data:
                    if not received:
                        raise _Stale("EOF")
                    raise UpstreamDisconnected(f"{self.origin} closed the connection mid-head")
                received = True
                parser.receive_data(bytes(data) if isinstance(data, bytearray) else data)
            elif isinstance(event, h11.Response):
                break
            elif not isinstance(event, h11.InformationalResponse):
                raise UpstreamProtocolError(f"unexpected {type(event).__name__} from {self.origin}")
        return self._response(conn, event, parser.trailing_data[0], head_only, keep_alive)

    def _response(
        self,
        conn: _Connection,
        event: h11.Response,
        leftover: bytes,
        head_only: bool,
        keep_alive: bool,
    ) -> UpstreamResponse:
        headers: list[tuple[bytes, bytes]] = list(event.headers)
        chunked = False
        length: int | None = None
        for name, value in headers:
            if name == b"transfer-encoding":  # h11 allows only `chunked`
                chunked = True
            elif name == b"content-length":  # h11 checked the digits and duplicates
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        if event.http_version < b"1.1":
            keep_alive = False
        body: _Body
        if head_only or event.status_code in (204, 304):
            body = _LengthBody(0)
        elif chunked:
            body = _ChunkedBody()
        elif length is not None:
            body = _LengthBody(length)
        else:
            body = _CloseBody()
            keep_alive = False
        if body.done and leftover:  # no body expected, yet bytes came after the head
            keep_alive, leftover = False, b""
        return UpstreamResponse(
            conn, event.status_code, bytes(event.reason), headers, body, keep_alive, leftover
        )
