"""The sans-IO SSE decoder: events and their raw bytes, however the stream is cut into reads.

Every stream below is checked against a plain reading of the WHATWG rules written here
(lines split on \r\n, \n or \r; a blank line ends an event), fed whole, at every split
into two reads, and a byte at a time.
"""

from __future__ import annotations

import re

import pytest

from trio_gateway.openai.sse import SSEDecodeError, SSEDecoder, SSEEvent

STREAMS = {
    "lf": b'data: {"a":1}\n\ndata: {"b":2}\n\n',
    "crlf": b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\n',
    "crlf, then comments and lines": (
        b"data: a\r\n\r\n: ping\r\n\r\ndata: b\r\n: c\r\ndata: d\r\n\r\ndata: e\r\n\r\n"
    ),
    "cr": b'data: {"a":1}\r\rdata: {"b":2}\r\r',
    "mixed": b'data: {"a":1}\r\n\ndata: x\rdata: y\n\r\n',
    "comments": b": ping\n\ndata: a\n: inside\ndata: b\n\n:\n\nretry: 10\n\n",
    "multi-line": b"event: message\ndata: {\ndata:  two spaces\ndata\nid: 3\n\n",
    "no space": b"data:tight\n\ndata:\n\ndata: \n\ndata:\ndata:\n\n",
    "error field": b'data: {"ok":1}\n\nerror: {"code":500,"message":"boom"}\n\n',
    "blank lines between": b"\n\ndata: a\n\n\n\ndata: b\n\n\r\n",
    "bom": b'\xef\xbb\xbfdata: {"a":1}\n\n',
    "unicode separators": 'data: {"t":"a\u2028b\u0085c"}\n\n'.encode(),
}

_LINE = re.compile(rb"\r\n|\r|\n")


def reference(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(field, value) of each event, by the spec's rules applied to the whole stream."""
    if stream.startswith(b"\xef\xbb\xbf"):
        stream = stream[3:]
    events: list[tuple[bytes, bytes]] = []
    data: list[bytes] = []
    error: bytes | None = None
    pieces = _LINE.split(stream)
    for line in pieces[:-1]:  # the last piece has no line end: never a whole line
        if not line:
            if error is not None:
                events.append((b"error", error))
            elif b"\n".join(data):
                events.append((b"data", b"\n".join(data)))
            data, error = [], None
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            data.append(value)
        elif name == b"error":
            error = value
    return events


def fed(decoder: SSEDecoder, reads: list[bytes]) -> list[SSEEvent]:
    return [event for read in reads for event in decoder.feed(read)]


def check(stream: bytes, reads: list[bytes]) -> None:
    assert b"".join(reads) == stream
    decoder = SSEDecoder()
    events = fed(decoder, reads)
    assert [(e.field, e.value) for e in events] == reference(stream)
    assert decoder.end() == b""  # every stream here ends between events
    # Each event's raw bytes are its own stretch of the stream, blank line included, in order.
    position = 0
    for event in events:
        found = stream.find(event.raw, position)
        assert found >= 0, event
        assert event.raw.endswith((b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n", b"\r\n\r", b"\n\r"))
        position = found + len(event.raw)


@pytest.mark.parametrize("name", STREAMS)
def test_whole_stream(name: str) -> None:
    check(STREAMS[name], [STREAMS[name]])


@pytest.mark.parametrize("name", STREAMS)
def test_split_at_every_offset(name: str) -> None:
    stream = STREAMS[name]
    for cut in range(len(stream) + 1):
        check(stream, [stream[:cut], stream[cut:]])


@pytest.mark.parametrize("name", STREAMS)
def test_a_byte_at_a_time(name: str) -> None:
    stream = STREAMS[name]
    check(stream, [stream[i : i + 1] for i in range(len(stream))])


def test_the_reference_reads_what_servers_send() -> None:
    """The reference itself, pinned: if it were wrong, the tests above would agree with it."""
    assert reference(STREAMS["lf"]) == [(b"data", b'{"a":1}'), (b"data", b'{"b":2}')]
    assert reference(STREAMS["crlf"]) == reference(STREAMS["lf"])
    assert reference(STREAMS["cr"]) == reference(STREAMS["lf"])
    assert reference(STREAMS["mixed"]) == [(b"data", b'{"a":1}'), (b"data", b"x\ny")]
    assert reference(STREAMS["comments"]) == [(b"data", b"a\nb")]
    assert reference(STREAMS["multi-line"]) == [(b"data", b"{\n two spaces\n")]
    assert reference(STREAMS["no space"]) == [(b"data", b"tight"), (b"data", b"\n")]
    assert reference(STREAMS["error field"])[1] == (b"error", b'{"code":500,"message":"boom"}')


def test_raw_bytes_are_what_a_relay_passes_on() -> None:
    events = SSEDecoder().feed(b': ping\n\ndata: {"a":1}\r\n\r\n')
    assert [e.raw for e in events] == [b'data: {"a":1}\r\n\r\n']
    (event,) = SSEDecoder().feed(b"data: x\ndata: y\n\n")
    assert event.raw == b"data: x\ndata: y\n\n"


def test_a_final_event_without_a_blank_line_is_not_an_event() -> None:
    decoder = SSEDecoder()
    assert [e.value for e in decoder.feed(b"data: a\n\ndata: b\n")] == [b"a"]
    assert not decoder.idle
    assert decoder.end() == b"data: b\n"
    assert decoder.end() == b""
    unterminated = SSEDecoder()
    assert unterminated.feed(b"data: c") == []
    assert unterminated.end() == b"data: c"


def test_the_blank_line_may_come_in_the_next_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: b\n") == []
    assert [e.raw for e in decoder.feed(b"\ndata: c\n\n")] == [b"data: b\n\n", b"data: c\n\n"]


def test_a_crlf_cut_between_its_bytes_ends_the_event_at_once() -> None:
    """A \r read last is a line end already: the event goes now; the \n after it is skipped,
    not taken for a blank line or for the next event's first byte."""
    decoder = SSEDecoder()
    (first,) = decoder.feed(b"data: a\r\n\r")
    assert first.raw == b"data: a\r\n\r" and not decoder.idle
    (second,) = decoder.feed(b"\ndata: b\r\n\r\n")
    assert second.raw == b"data: b\r\n\r\n"
    assert decoder.idle


def test_idle_only_between_events() -> None:
    decoder = SSEDecoder()
    assert not decoder.idle  # nothing read: a byte order mark may come
    decoder.feed(b"data: a\n\n")
    assert decoder.idle
    decoder.feed(b"data: b")
    assert not decoder.idle
    decoder.feed(b"\n\n")
    assert decoder.idle
    decoder.feed(b"\n")  # a blank line ends no event: nothing is held
    assert decoder.idle and decoder.end() == b""


def test_a_byte_order_mark_cut_short_is_held() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    (event,) = decoder.feed(b"\xbfdata: a\n\n")
    assert (event.value, event.raw) == (b"a", b"data: a\n\n")
    assert [e.value for e in SSEDecoder().feed(b"\xefdata: a\n\n")] == []  # not a BOM: a field


def test_an_event_over_the_bound_fails_split_or_not() -> None:
    with pytest.raises(SSEDecodeError):
        SSEDecoder(max_event_bytes=100).feed(b"data: " + b"x" * 200)
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 60)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"x" * 60 + b"\r")
    # Events of any size below the bound pass, however many one read holds.
    assert len(SSEDecoder(max_event_bytes=100).feed(b"data: x\n\n" * 1000)) == 1000
