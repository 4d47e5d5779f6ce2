"""`trio-gateway serve`, `worker` and `check-config` failing to start, as real processes:
one line on stderr naming what to change, exit 1 (2 for a bad setting), no traceback.
Ports are taken on 127.0.0.1 first; every wait is bounded."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.support.ports import free_port
from trio_gateway.cli import run_until_stopped, serve
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.gateway import Gateway
from trio_gateway.http.application import GatewayApp
from trio_gateway.processes import StartupError

EXE = str(Path(sys.executable).parent / "trio-gateway")


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [EXE, *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The process's stderr, which must be one line."""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    return lines[0]


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_serve_on_a_port_in_use_says_so_in_one_line(processes: str) -> None:
    with taken_port() as port:
        result = await run("serve", "--port", str(port), "--processes", processes)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("trio-gateway: ")
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "--port" in line


async def test_serve_on_an_address_not_of_this_machine() -> None:
    result = await run("serve", "--host", "192.0.2.1", "--port", str(free_port()))
    assert result.returncode == 1
    line = one_line(result)
    assert "192.0.2.1" in line
    assert "--host" in line


async def test_serve_on_an_unknown_host_name() -> None:
    result = await run("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    assert "--host" in one_line(result)


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
async def test_worker_on_a_port_in_use_names_the_flag(flag: str) -> None:
    ports = {"--port": str(free_port()), "--metrics-port": str(free_port())}
    with taken_port() as port:
        ports[flag] = str(port)
        result = await run("worker", *(item for pair in ports.items() for item in pair))
    assert result.returncode == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line
    assert flag in line


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--worker", "http://127.0.0.1:notaport/v1"],
        ["serve", "--worker", "ws://"],
        ["serve", "--session-store", "redis://:pw@:6379/0"],
        ["worker", "--upstream", "http://"],
        ["serve", "--port", "70000"],
    ],
)
async def test_a_bad_setting_is_one_line_and_exit_2(argv: list[str]) -> None:
    result = await run(*argv)
    assert result.returncode == 2
    assert one_line(result).startswith("trio-gateway: ")


async def test_check_config_into_a_closed_pipe_is_quiet() -> None:
    """`check-config | head -1`: the reader leaves before the settings are written."""
    read, write = os.pipe()
    os.close(read)
    try:
        with trio.fail_after(30):
            result = await trio.run_process(
                [EXE, "check-config"], stdout=write, capture_stderr=True, check=False
            )
    finally:
        os.close(write)
    assert result.stderr == b""
    assert result.returncode == 0


class FailingEngine(MockEngine):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise RuntimeError("no engine today")


async def test_a_failing_startup_is_one_log_line_and_a_startup_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = GatewayConfig(port=0)
    app = GatewayApp(Gateway(config, [FailingEngine(("mock",))]))
    with trio.fail_after(10), pytest.raises(StartupError) as raised:
        await run_until_stopped(partial(serve, app, config))
    assert str(raised.value) == ""  # said by the log line: main prints nothing more
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in failures] == ["startup failed: no engine today"]
    assert not failures[0].exc_info  # the traceback only at debug level
