"""What the upstream HTTP/1.1 client parses and refuses without a connection: the chunked body
decoder at every split, malformed chunks, bad origins and headers the client sets itself."""

from __future__ import annotations

import pytest

from trio_gateway.engines.upstream.client import UpstreamPool, UpstreamProtocolError
from trio_gateway.engines.upstream.client.framing import MAX_LINE, ChunkedBody


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_the_chunked_decoder_at_every_split() -> None:
    wire = chunk(b"data: a\n\n") + chunk(b"x" * 300) + b"0\r\nA: 1\r\nB: 2\r\n\r\n"
    expected = b"data: a\n\n" + b"x" * 300
    for cut in range(len(wire) + 1):
        decoder = ChunkedBody()
        out = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert out == expected and decoder.done and not decoder.extra, cut
    decoder = ChunkedBody()
    out = b"".join(decoder.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == expected and decoder.done
    decoder = ChunkedBody()
    decoder.feed(wire + b"HTTP/1.1")
    assert decoder.done and decoder.extra


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\n", b"+5\r\nhello\r\n", b"5\r\nhelloXY", b"5\r\nhello\n", b"1" * (MAX_LINE + 1)],
    ids=["not-hex", "signed", "no-crlf", "bare-lf", "over-long"],
)
def test_the_chunked_decoder_rejects(wire: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ChunkedBody().feed(wire)


def test_bad_arguments() -> None:
    for url in ("ftp://host", "http://", "http://host/v1", "http://user:pw@host", "http://h?q"):
        with pytest.raises(ValueError, match="origin"):
            UpstreamPool(url)
    pool = UpstreamPool("http://[::1]:8080")
    assert pool.origin == "http://[::1]:8080"
    for header in (b"Host", b"Content-Length", b"transfer-encoding"):
        with pytest.raises(ValueError, match="sets the"):
            pool.stream("GET", "/", [(header, b"x")])
    with pytest.raises(ValueError, match="not a valid HTTP request"):
        pool.stream("GET", "/", [(b"x-injected", b"a\r\nb: c")])
