"""`trio-gateway serve --processes 2` as real processes on a loopback port: both children
serve, /metrics is summed whichever child answers, SIGTERM drains every child, a child that
dies stops the set. Every wait is bounded."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import trio

from tests.support.gateway_process import drain_pipe, gateway_command, post, read_response
from tests.support.ports import free_port

BODY = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x"}]}


class Supervised:
    def __init__(self, process: trio.Process, port: int, children: list[int]) -> None:
        self.process = process
        self.port = port
        self.children = children


@asynccontextmanager
async def supervised(*flags: str) -> AsyncIterator[Supervised]:
    port = free_port()
    command = [*gateway_command(*flags), "--processes", "2"]
    command[command.index("--port") + 1] = str(port)
    children: list[int] = []
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                check=False,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        )
        try:
            children += await _wait_for_children(process, 2)
            nursery.start_soon(drain_pipe, process.stderr)
            yield Supervised(process, port, children)
        finally:
            if process.returncode is None:
                process.kill()
            for pid in children:  # each leads its own process group
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


async def _wait_for_children(process: trio.Process, count: int) -> list[int]:
    """The children's pids, once each has said it is listening."""
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(30):
        while seen.count(b"Running on http://") < count:
            data = await process.stderr.receive_some()
            assert data, f"the gateway exited early: {seen.decode(errors='replace')}"
            seen += data
    pids = [
        int(line.split(b"(pid ")[1].split(b")")[0])
        for line in seen.splitlines()
        if b"gateway process" in line and b"started (pid" in line
    ]
    assert len(pids) == count, seen.decode(errors="replace")
    return pids


async def stream_once(port: int, tokens: int = 3) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(post(port, dict(BODY, mock={"tokens": tokens, "itl_ms": 10})))
        return await read_response(stream)


async def get(port: int, path: str, method: str = "GET") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        received = b""
        while data := await stream.receive_some():
            received += data
    return received


def successes(exposition: bytes) -> float:
    return sum(
        float(line.rsplit(b" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith(b"trio_gateway_requests_total{") and b'status="success"' in line
    )


async def test_two_children_serve_and_metrics_are_summed_whichever_answers() -> None:
    async with supervised() as served:
        with trio.fail_after(60):
            responses = []
            for _ in range(20):  # a connection each: the kernel spreads them by port
                responses.append(await stream_once(served.port))
            assert all(r.startswith(b"HTTP/1.1 200") for r in responses)
            assert all(r.rstrip(b"\r\n0").endswith(b"data: [DONE]") for r in responses)
            # A request is counted just after its last byte: wait for the 20th, then
            # whichever child answers a scrape counts all 20.
            while successes(await get(served.port, "/metrics")) < 20:  # noqa: ASYNC110
                await trio.sleep(0.05)  # another process's state: nothing here to wait on
            for _ in range(6):
                assert successes(await get(served.port, "/metrics")) == 20
            for path in ("/admin/workers", "/admin/drain"):
                refused = await get(served.port, path, "POST")
                assert refused.startswith(b"HTTP/1.1 409"), refused
                assert b"shared_port" in refused
            served.process.send_signal(signal.SIGTERM)
            assert await served.process.wait() == 0
        for pid in served.children:
            assert not _alive(pid)


async def test_sigterm_lets_streams_in_every_child_finish() -> None:
    async with supervised("--drain-timeout-s", "10") as served:
        with trio.fail_after(60):
            results: list[bytes] = []
            opened = trio.Semaphore(0)

            async def one() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", served.port)
                async with stream:
                    await stream.send_all(
                        post(served.port, dict(BODY, mock={"tokens": 10, "itl_ms": 100}))
                    )
                    first = await stream.receive_some()
                    opened.release()
                    results.append(first + await read_response(stream))

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(one)
                for _ in range(8):
                    await opened.acquire()
                served.process.send_signal(signal.SIGTERM)
            assert len(results) == 8
            for response in results:
                assert b'"finish_reason":"stop"' in response, response[-300:]
                assert response.rstrip(b"\r\n0").endswith(b"data: [DONE]")
            assert await served.process.wait() == 0


async def test_a_child_told_to_stop_stops_the_set_cleanly() -> None:
    """systemd and `docker stop` send SIGTERM to every process, not only the supervisor."""
    async with supervised() as served:
        with trio.fail_after(60):
            os.kill(served.children[1], signal.SIGTERM)
            assert await served.process.wait() == 0
        for pid in served.children:
            assert not _alive(pid)


async def test_a_child_that_dies_stops_the_others_and_the_supervisor_fails() -> None:
    async with supervised() as served:
        with trio.fail_after(60):
            os.kill(served.children[0], signal.SIGKILL)
            assert await served.process.wait() == 1
        for pid in served.children:
            assert not _alive(pid)


async def test_children_stop_when_the_supervisor_is_killed() -> None:
    async with supervised() as served:
        with trio.fail_after(30):
            served.process.kill()  # no signal to pass on: the children learn it from the kernel
            await served.process.wait()
            while any(_alive(pid) for pid in served.children):  # noqa: ASYNC110
                await trio.sleep(0.05)  # grandchildren: no wait() for them here
    # What a supervisor killed outright leaves behind, and can be told apart by its pid.
    left = f"{tempfile.gettempdir()}/trio-gateway-metrics-{served.process.pid}-*"
    [metrics_dir] = glob.glob(left)
    shutil.rmtree(metrics_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone once its parent (the supervisor) reaped it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
