"""`trio-gateway serve` as a child process: its command line, its port, raw HTTP to it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import trio


def gateway_command(*flags: str) -> list[str]:
    exe = Path(sys.executable).parent / "trio-gateway"
    return [str(exe), "serve", "--port", "0", *flags]


async def read_port(process: trio.Process) -> int:
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(20):
        while (match := re.search(rb"Running on http://127\.0\.0\.1:(\d+)", seen)) is None:
            data = await process.stderr.receive_some()
            assert data, f"the gateway exited early: {seen.decode(errors='replace')}"
            seen += data
    return int(match.group(1))


def post(port: int, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def read_response(stream: trio.SocketStream) -> bytes:
    """Everything until the server's chunked terminator or its close."""
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        data = await stream.receive_some()
        if not data:
            break
        received += data
    return received


async def drain_pipe(pipe: trio.abc.ReceiveStream | None) -> None:
    assert pipe is not None
    while await pipe.receive_some():
        pass
