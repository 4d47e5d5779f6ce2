"""`trio-gateway serve --config FILE` as a real process, in front of test upstreams serving
one model under an alias and a `trio-gateway worker` process: SIGHUP with streams running on
every configured backend, the file now removing one upstream and adding another. Every
stream ends whole; new requests go to the backends the file names now; the removed upstream
gets nothing new. Every wait is bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests.support.ports import free_port
from tests.support.upstream_server import MockUpstream, running_upstream

TOKENS = 40  # the test upstream's "slow" model: a token every 50 ms, about 2 s a stream
STREAMS = 4


def backends_file(path: Path, backends: dict[str, MockUpstream], worker_port: int = 0) -> None:
    lines = ['routing_policy = "round_robin"']
    for name, upstream in backends.items():
        lines += [
            "",
            "[[backends]]",
            f'name = "{name}"',
            f'url = "{upstream.url}"',
            'aliases = { llama = "slow" }',
        ]
    if worker_port:
        lines += [
            "",
            "[[backends]]",
            'name = "worker-1"',
            f'url = "ws://127.0.0.1:{worker_port}"',
            'api_key_env = "WORKER_TOKEN"',
            'models = ["mock"]',
        ]
    path.write_text("\n".join(lines) + "\n")


@asynccontextmanager
async def worker_process() -> AsyncIterator[int]:
    """A `trio-gateway worker` (the mock) with token `secret`; its request plane's port."""
    exe = Path(sys.executable).parent / "trio-gateway"
    command = [str(exe), "worker", "--port", "0", "--metrics-port", "0", "--token", "secret"]
    log = Log()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
        )
        try:
            assert process.stderr is not None
            nursery.start_soon(log.read, process.stderr)
            match = await log.wait_for(r"request plane ws://127\.0\.0\.1:(\d+)")
            yield int(match.group(1))
        finally:
            process.kill()


class Log:
    """The gateway's stderr, read as it comes (so the pipe never fills)."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = trio.Event()

    async def read(self, pipe: trio.abc.ReceiveStream) -> None:
        while data := await pipe.receive_some():
            self.text += data.decode(errors="replace")
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        with trio.fail_after(20):
            while (match := re.search(pattern, self.text)) is None:
                await self._changed.wait()
        return match


async def exchange(port: int, method: str, path: str, body: Any = None) -> bytes:
    """One request on its own connection, read to the server's close."""
    payload = b"" if body is None else json.dumps(body).encode()
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            received = b""
            while data := await stream.receive_some():
                received += data
    return received


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama", "messages": [{"role": "user", "content": "hi"}], **extra}


async def inflight(port: int) -> dict[str, int]:
    answer = await exchange(port, "GET", "/admin/workers")
    workers = json.loads(answer.split(b"\r\n\r\n", 1)[1])["workers"]
    return {w["id"]: w["inflight"] for w in workers}


async def wait_all_available(port: int, names: set[str]) -> None:
    for _ in range(200):
        answer = await exchange(port, "GET", "/admin/workers")
        workers = json.loads(answer.split(b"\r\n\r\n", 1)[1])["workers"]
        if {w["id"] for w in workers if w["available"]} == names:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"backends not all available: {workers}")


async def test_sighup_adds_and_drains_backends_with_streams_intact(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    async with AsyncExitStack() as stack:
        u1, u2, u3 = [await stack.enter_async_context(running_upstream()) for _ in range(3)]
        worker_port = await stack.enter_async_context(worker_process())
        backends_file(config, {"a": u1, "b": u2}, worker_port)
        exe = Path(sys.executable).parent / "trio-gateway"
        log = Log()
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [str(exe), "serve", "--port", "0", "--config", str(config)],
                    stderr=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    check=False,
                    env=dict(os.environ, PYTHONUNBUFFERED="1", WORKER_TOKEN="secret"),
                )
            )
            try:
                assert process.stderr is not None
                nursery.start_soon(log.read, process.stderr)
                port = int((await log.wait_for(r"Running on http://127\.0\.0\.1:(\d+)")).group(1))
                await wait_all_available(port, {"a", "b", "worker-1"})
                models = await exchange(port, "GET", "/v1/models")
                listed = [m["id"] for m in json.loads(models.split(b"\r\n\r\n", 1)[1])["data"]]
                assert listed == ["llama", "mock"]

                results: list[bytes] = []

                async def one_stream() -> None:
                    results.append(
                        await exchange(
                            port,
                            "POST",
                            "/v1/chat/completions",
                            chat(stream=True, max_tokens=TOKENS),
                        )
                    )

                worker_results: list[bytes] = []

                async def worker_stream() -> None:
                    body = chat(model="mock", stream=True, mock={"tokens": TOKENS, "itl_ms": 50})
                    worker_results.append(
                        await exchange(port, "POST", "/v1/chat/completions", body)
                    )

                with trio.fail_after(30):
                    async with trio.open_nursery() as streams:
                        streams.start_soon(worker_stream)
                        for _ in range(STREAMS):
                            streams.start_soon(one_stream)
                        await u1.wait_until(lambda: u1.generating == STREAMS // 2)
                        await u2.wait_until(lambda: u2.generating == STREAMS // 2)
                        for _ in range(100):  # the worker's stream is in flight too
                            if (await inflight(port))["worker-1"] == 1:
                                break
                            await trio.sleep(0.02)
                        assert await inflight(port) == {"a": 2, "b": 2, "worker-1": 1}

                        backends_file(config, {"b": u2, "c": u3}, worker_port)
                        process.send_signal(signal.SIGHUP)
                        await log.wait_for(r"reloading backends: added c; removed a")
                        await wait_all_available(port, {"b", "c", "worker-1"})
                        assert u1.generating == STREAMS // 2  # still streaming, not cut
                        before = len(u1.generations)
                        for _ in range(4):
                            answer = await exchange(
                                port, "POST", "/v1/chat/completions", chat(max_tokens=2)
                            )
                            assert answer.startswith(b"HTTP/1.1 200"), answer
                            assert b'"model":"llama"' in answer
                        assert len(u1.generations) == before  # the removed one got nothing
                        assert len(u3.generations) == 2
                await log.wait_for(r"backend a: stopped")
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(10):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
    assert len(results) == STREAMS
    for response in results:
        assert response.startswith(b"HTTP/1.1 200")
        assert response.count(b'"content":"t') == TOKENS
        assert b"data: [DONE]" in response
        assert b'"error"' not in response
        assert b'"model":"slow"' not in response and b'"model":"llama"' in response
    for upstream in (u1, u2, u3):
        assert {r.body["model"] for r in upstream.generations} <= {"slow"}
    (worker_response,) = worker_results  # the unchanged worker's stream, across the reload
    assert worker_response.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in worker_response and b'"error"' not in worker_response
    assert worker_response.count(b'"finish_reason":"stop"') == 1


async def test_sighup_reaches_every_child_under_processes(tmp_path: Path) -> None:
    """The supervisor passes SIGHUP on: each child reloads (and none stops); a SIGTERM
    after still drains the set to exit 0."""
    config = tmp_path / "gateway.toml"
    async with running_upstream() as u1, running_upstream() as u2:
        backends_file(config, {"a": u1})
        exe = Path(sys.executable).parent / "trio-gateway"
        port = free_port()
        log = Log()
        command = [str(exe), "serve", "--port", str(port), "--processes", "2"]
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [*command, "--config", str(config)],
                    stderr=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    check=False,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            )
            try:
                assert process.stderr is not None
                nursery.start_soon(log.read, process.stderr)
                await log.wait_for(r"(?s)Running on http://.*Running on http://")
                backends_file(config, {"a": u1, "b": u2})
                process.send_signal(signal.SIGHUP)
                await log.wait_for(r"(?s)reloading backends: added b.*reloading backends: added b")
                assert process.returncode is None
                with trio.fail_after(20):
                    await u2.wait_until(lambda: len(u2.model_probes) >= 2)  # one per child
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
    assert code == 0
    assert "passing it on to every gateway process (reload)" in log.text
