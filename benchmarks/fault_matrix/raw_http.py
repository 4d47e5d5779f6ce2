"""A raw HTTP/1.1 client, and what a case reads in an answer (status, error body, SSE frames).

Raw bytes, not an HTTP library: half the cases send what no library would (smuggled framing,
CR inside a header, a body that never ends, path tricks), and the other half need to see
exactly when bytes arrive and when the server closes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last of repeated ones
    body: bytes  # de-chunked
    complete: bool  # the whole body arrived (Content-Length met, or the last chunk)
    closed: bool = False  # the server closed the connection after it (when checked)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def events(self) -> list[Any]:
        """The SSE `data:` payloads, parsed (`"[DONE]"` as that string)."""
        out: list[Any] = []
        for line in self.body.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                out.append("[DONE]")
                continue
            try:
                out.append(json.loads(payload))
            except ValueError:
                out.append(payload.decode(errors="replace"))
        return out

    @property
    def error_frames(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    @property
    def tokens(self) -> int:
        """Events with non-empty content (a chat stream's role event has `"content":""`)."""
        return len(re.findall(rb'"content":"(?!")', self.body))

    @property
    def ends_with_done(self) -> bool:
        events = self.events
        return bool(events) and events[-1] == "[DONE]"

    def short(self) -> str:
        return f"{self.status} {self.body[:160]!r}"


def openai_error(answer: Answer) -> dict[str, Any] | None:
    """The `error` object when the body is `{"error": {message, type, param, code}}`."""
    body = answer.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    shaped = (
        isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and "param" in error
        and "code" in error
    )
    return error if shaped else None


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """A chunked body's data so far, and whether its last chunk arrived."""
    out = bytearray()
    at = 0
    while True:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0:
            return bytes(out), False
        try:
            size = int(raw[at:line_end].split(b";")[0], 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            return bytes(out), True
        start = line_end + 2
        if len(raw) < start + size + 2:
            out += raw[start:]
            return bytes(out), False
        out += raw[start : start + size]
        at = start + size + 2


class Connection:
    """One client connection; reads are bounded by the caller's `trio.fail_after`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.raw = b""  # everything received
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bool:
        """Read once more; False at the end of the connection (or a reset)."""
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.raw += data
        return True

    async def wait_for(self, predicate: Callable[[bytes], bool]) -> bool:
        """Read until `predicate(everything received)` holds; False if the connection ended."""
        while not predicate(self.raw):
            if not await self.receive():
                return predicate(self.raw)
        return True

    async def answer(self, *, check_closed: bool = False) -> Answer:
        """The (first) response, whole; with `check_closed`, then whether the server closes
        the connection within 2 s."""
        await self.wait_for(lambda raw: b"\r\n\r\n" in raw)
        if b"\r\n\r\n" not in self.raw:
            raise ConnectionError(f"no response head, got {self.raw[:200]!r}")
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = len(head) + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await self.wait_for(lambda raw: dechunk(raw[start:])[1])
            body, complete = dechunk(self.raw[start:])
        elif "content-length" in headers:
            length = int(headers["content-length"])
            await self.wait_for(lambda raw: len(raw) - start >= length)
            body = self.raw[start : start + length]
            complete = len(body) == length
        else:
            await self.wait_for(lambda raw: False)  # to the end of the connection
            body, complete = self.raw[start:], True
        del rest
        answer = Answer(status, headers, body, complete)
        if check_closed:
            with trio.move_on_after(2):
                while await self.receive():
                    pass
            answer.closed = self.eof
        return answer

    async def aclose(self) -> None:
        await self.stream.aclose()


def request_bytes(
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    payload = (
        b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    )
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    names = {name.lower() for name, _ in headers}
    if body is not None and "content-type" not in names:
        lines.append("content-type: application/json")
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"content-length: {len(payload)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


async def call(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: Iterable[tuple[str, str]] = (),
    *,
    raw: bytes | None = None,
    seconds: float = 10,
    check_closed: bool = False,
) -> Answer:
    """One request on a new connection (`raw`: these exact bytes instead), its answer."""
    with trio.fail_after(seconds):
        connection = await Connection.open(port)
        try:
            await connection.send(
                raw if raw is not None else request_bytes(method, path, body, headers)
            )
            return await connection.answer(check_closed=check_closed)
        finally:
            await connection.aclose()


def stream_ended(raw: bytes) -> bool:
    """A chunked response's last chunk arrived (what a case waits for on a stream)."""
    return raw.endswith(b"0\r\n\r\n")


def body_of(connection: Connection) -> Answer:
    """What a stream's connection received, as an answer (head parsed, body de-chunked)."""
    head, _, rest = connection.raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    body, complete = dechunk(rest)
    return Answer(status, {}, body, complete)


async def stream_answer(connection: Connection) -> Answer:
    """Read a stream to its last chunk; what it received, as an answer."""
    await connection.wait_for(stream_ended)
    return body_of(connection)


def announced_body(path: str, length: int) -> bytes:
    """A POST head announcing a JSON body of `length` bytes, no body: the caller sends what
    it likes of it (a trickle, a part, nothing)."""
    return request_bytes(
        "POST",
        path,
        None,
        [("content-type", "application/json"), ("content-length", str(length))],
    )
