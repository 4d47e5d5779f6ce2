"""Server-sent events of OpenAI streams: the gateway's own frames (`[DONE]`, the error
event) and a decoder for relays, which keeps each event's own bytes so a relay passes them
on without re-encoding. (The mock encodes its events itself: `engines/mock_answer/stream.py`.)
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from trio_gateway.errors import GatewayError
from trio_gateway.openai.errors import stream_error_body

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """The in-band error of a stream whose headers are gone; `[DONE]` must follow it."""
    return frame(orjson.dumps(stream_error_body(error)))


class SSEEvent(NamedTuple):
    raw: bytes  # the event's bytes as received, its blank line included: what a relay sends
    field: bytes  # b"data", or b"error" (llama.cpp's server writes `error: {...}` lines)
    value: bytes  # the field's value (several `data:` lines joined by b"\n")


class SSEDecodeError(Exception):
    pass


_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n?|\n")


class SSEDecoder:
    """Splits an SSE byte stream into events, fed bytes as they arrive (no I/O here).

    The WHATWG `text/event-stream` rules, as far as a relay needs them: lines end with
    \r\n, \n or \r, mixed at will (vLLM, SGLang and llama.cpp's C++ server write \n,
    Python's sse-starlette \r\n), and only those bytes: U+2028 and friends are text inside
    tokens. A blank line ends an event; one leading space of a value is dropped; `data`
    lines join with \n; an event with no data (a `: ping` comment, `retry:`, `data:` with
    nothing) is dropped, and so is a leading byte order mark. `event:` and `id:` are not
    kept: OpenAI streams do not use them. One extension: llama.cpp's `error: {...}` line
    makes the event an error (`field == b"error"`).

    Every event keeps its raw bytes, so a relay passes it on without re-encoding. An event
    the stream ends in the middle of is never dispatched (the spec's rule too): `end` hands
    its bytes back, which a relay must not pass on (its client would read them as the start
    of the next event).

    One-line `data` events with \n (the usual) or \r\n line ends are found by C-level
    scans for the blank lines; anything else (comments, several lines, a lone \r, mixed
    ends, an event cut by a read with \r in it) is read a line at a time.
    """

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""  # an event begun and not yet ended
        self._begun = False  # bytes were read: a byte order mark is no longer possible
        # The last event ended with a \r that was the last byte read: a \n next belongs to
        # it (\r\n), and is skipped.
        self._skip_lf = False
        self._edge = True  # either of the two above: the next bytes need a look first

    @property
    def idle(self) -> bool:
        """Between events: the next bytes start an event of their own."""
        return not self._buffer and not self._edge

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer + data if self._buffer else data
        if self._edge:
            buffer = self._past_edge(buffer)
            if not buffer:
                return []
        if 0x0D in buffer:  # an int: one memchr (b"\r" is a substring search)
            return self._feed_crlf(buffer)
        # Every line ends with \n: events end at b"\n\n", found in C.
        events: list[SSEEvent] = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            stop = end + 2
            if buffer.startswith(b"data: ", start) and buffer.find(b"\n", start, end) < 0:
                value = buffer[start + 6 : end]  # the usual one-line event
                if value:
                    events.append(SSEEvent(buffer[start:stop], b"data", value))
            else:
                event = _event(buffer[start:stop], buffer[start:end].split(b"\n"))
                if event is not None:
                    events.append(event)
            start = stop
        if start < len(buffer):
            while buffer.startswith(b"\n", start):  # a blank line that ends no event
                start += 1
        self._keep(buffer[start:] if start else buffer)
        return events

    def end(self) -> bytes:
        """The stream ended: the bytes of an event it ended in the middle of (b"" if it
        ended between events), which is not an event. The decoder starts afresh."""
        rest = self._buffer
        self._buffer = b""
        self._begun = self._skip_lf = False
        self._edge = True
        return rest

    def _past_edge(self, buffer: bytes) -> bytes:
        """`buffer` without a leading byte order mark or the \n of a \r\n cut by a read
        (b"" when there is nothing else yet: held if it may be a mark's start)."""
        if not self._begun:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer  # perhaps the start of a byte order mark
                return b""
            self._begun = True
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        if self._skip_lf and buffer:
            self._skip_lf = False
            if buffer[0] == 0x0A:
                buffer = buffer[1:]
        self._edge = self._skip_lf
        if not buffer:
            self._buffer = b""
        return buffer

    def _keep(self, rest: bytes) -> None:
        if len(rest) > self.max_event_bytes:
            raise SSEDecodeError(f"an SSE event over {self.max_event_bytes} bytes")
        self._buffer = rest

    def _feed_crlf(self, buffer: bytes) -> list[SSEEvent]:
        """\r\n line ends (sse-starlette's): one-line `data` events found in C, as with
        \n; from the first other thing on (a comment, several lines, a lone \r or \n, an
        event cut short), a line at a time."""
        events: list[SSEEvent] = []
        start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) >= 0:
            if (
                not buffer.startswith(b"data: ", start)
                or buffer.find(0x0D, start, end) >= 0
                or buffer.find(0x0A, start, end) >= 0
            ):
                break
            stop = end + 4
            value = buffer[start + 6 : end]
            if value:
                events.append(SSEEvent(buffer[start:stop], b"data", value))
            start = stop
        if start < len(buffer):
            events += self._feed_any(buffer[start:] if start else buffer)
        else:
            self._buffer = b""
        return events

    def _feed_any(self, buffer: bytes) -> list[SSEEvent]:
        """Events in `buffer` whatever its line ends, a line at a time."""
        events: list[SSEEvent] = []
        start = 0  # of the current event
        lines: list[bytes] = []
        pos = 0  # of the current line
        size = len(buffer)
        while (match := _LINE_END.search(buffer, pos)) is not None:
            stop = match.end()
            if match.start() > pos:
                lines.append(buffer[pos : match.start()])
            else:  # a blank line: the event ends
                event = _event(buffer[start:stop], lines)
                if event is not None:
                    events.append(event)
                lines = []
                start = stop
                if stop == size and buffer[-1] == 0x0D:
                    # The \n of a \r\n may be in the next read.
                    self._skip_lf = self._edge = True
            pos = stop
        self._keep(buffer[start:] if start else buffer)
        return events


def _event(raw: bytes, lines: list[bytes]) -> SSEEvent | None:
    """The event these lines (line ends removed) make, if any."""
    data: list[bytes] = []
    error: bytes | None = None
    for line in lines:
        name, _, value = line.partition(b":")
        if not name:
            continue  # a comment, or a blank line that ended nothing
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"error":
            error = value
    if error is not None:
        return SSEEvent(raw, b"error", error)
    if data and (len(data) > 1 or data[0]):
        return SSEEvent(raw, b"data", b"\n".join(data))
    return None


def completion_text(payload: bytes) -> str:
    """The first choice's content in an engine's payload (SSE events or a unary body), for
    `--log-prompts`: the one place the gateway decodes tokens, and only when asked."""
    if not payload:
        return ""
    try:
        if not payload.startswith(b"data:"):
            return _choice_text(orjson.loads(payload), "message")
        return "".join(
            _choice_text(orjson.loads(event.value), "delta")
            for event in SSEDecoder().feed(payload)
            if event.field == b"data" and event.value != b"[DONE]"
        )
    except (orjson.JSONDecodeError, SSEDecodeError):
        return ""


def _choice_text(document: Any, key: str) -> str:
    choices = document.get("choices") if isinstance(document, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            part = choice.get(key)
            text = part.get("content") if isinstance(part, dict) else choice.get("text")
            return text if isinstance(text, str) else ""
    return ""
