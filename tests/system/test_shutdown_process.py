"""`trio-gateway serve` as a real process: SIGTERM with 20 streams open, and an idle
keep-alive connection that must not hold the exit. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial

import trio

from tests.support.gateway_process import (
    drain_pipe,
    gateway_command,
    post,
    read_port,
    read_response,
)

STREAM_SECONDS = 2.0  # 20 tokens at 100 ms


async def test_sigterm_drains_twenty_streams_and_exits_zero() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                gateway_command("--drain-timeout-s", "10"),
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                check=False,
                env=env,
            )
        )
        try:
            port = await read_port(process)
            # Keep reading the log so the pipe never fills.
            nursery.start_soon(drain_pipe, process.stderr)
            body = {
                "model": "mock",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
                "mock": {"tokens": 20, "itl_ms": 100},
            }
            results: list[bytes] = []

            async def one_stream() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(post(port, body))
                    results.append(await read_response(stream))

            with trio.fail_after(10):
                idle = await trio.open_tcp_stream("127.0.0.1", port)  # an idle keep-alive client
                await idle.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                assert (await idle.receive_some()).startswith(b"HTTP/1.1 200")

            with trio.fail_after(STREAM_SECONDS + 10):
                async with trio.open_nursery() as streams:
                    for _ in range(20):
                        streams.start_soon(one_stream)
                    await trio.sleep(0.5)
                    sent_at = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    await trio.sleep(0.2)
                    late = await trio.open_tcp_stream("127.0.0.1", port)
                    async with late:
                        await late.send_all(post(port, dict(body, stream=False)))
                        refused = await read_response(late)
                exit_code = await process.wait()
                exited_after = time.monotonic() - sent_at
        finally:
            if process.returncode is None:
                process.kill()
        await idle.aclose()
    assert refused.startswith(b"HTTP/1.1 503")
    assert len(results) == 20
    for response in results:
        assert response.startswith(b"HTTP/1.1 200")
        assert response.count(b'"content":"') - 1 == 20  # the role event carries "" too
        assert b"data: [DONE]" in response
        assert b'"error"' not in response
    assert exit_code == 0
    # The streams had ~1.5 s left at SIGTERM; exit within their length + 1 s.
    assert exited_after < STREAM_SECONDS + 1
