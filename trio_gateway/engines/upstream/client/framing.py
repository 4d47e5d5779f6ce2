"""A response body's framing, sans-IO: `feed` socket bytes, get body bytes back.

h11 parses the response head (where its strictness pays); the body is framed here, because
h11's chunked reader costs several times `ChunkedBody`'s, on a path that runs once per SSE
event (benchmarks/upstream_client.py measures both). The three framings are
HTTP/1.1's: a `Content-Length`, `Transfer-Encoding: chunked`, or neither (until the server
closes). Each also says whether the body ended with nothing after it, which is what lets
the pool reuse the connection.
"""

from __future__ import annotations

import re

from trio_gateway.engines.upstream.client.errors import (
    UpstreamDisconnected,
    UpstreamProtocolError,
)

# A chunk-size or trailer line longer than this is a broken upstream.
MAX_LINE = 16 * 1024

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")


class BodyFraming:
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


class LengthBody(BodyFraming):
    """`Content-Length: n` (0 too: a HEAD answer, a 204 or 304)."""

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


class CloseBody(BodyFraming):
    """No length and not chunked: the body is everything until the server closes."""

    __slots__ = ()

    def feed(self, data: bytes) -> bytes:
        return data

    def eof(self) -> None:
        self.done = True


_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class ChunkedBody(BodyFraming):
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
