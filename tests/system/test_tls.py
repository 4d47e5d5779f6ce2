"""TLS on every hop, on real loopback sockets with certificates from trustme: the gateway
served over HTTPS (as `trio-gateway serve` binds it), https upstreams with a custom CA and a
client certificate, wss:// workers.

Every wait here is bounded with `trio.fail_after`; nothing sleeps to let time pass.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from tests.support.asgi_client import Harness, running_gateway
from tests.support.bodies import chat
from tests.support.gateway_process import drain_pipe, gateway_command
from tests.support.ports import free_port
from tests.support.upstream_server import expected_text, running_upstream
from trio_gateway import cli
from trio_gateway.config import ConfigError, GatewayConfig, WorkerConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.http import socket_writes
from trio_gateway.http.application import create_app
from trio_gateway.worker.server import WorkerServer

CHAT = "/v1/chat/completions"
STREAM = chat(model="up-a", stream=True, max_tokens=3)  # a model the test upstream serves
WAIT_S = 20


@dataclass
class Identity:
    """A CA's PEM file and a certificate it issued (chain and key), on disk."""

    ca: str
    cert: str
    key: str


def identity(tmp_path: Path, name: str, *hosts: str, ca: trustme.CA | None = None) -> Identity:
    ca = ca or trustme.CA()
    leaf = ca.issue_cert(*hosts)
    paths = [tmp_path / f"{name}-{part}.pem" for part in ("ca", "cert", "key")]
    ca.cert_pem.write_to_path(str(paths[0]))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return Identity(*(str(path) for path in paths))


@pytest.fixture
def server_id(tmp_path: Path) -> Identity:
    return identity(tmp_path, "server", "127.0.0.1", "localhost")


@pytest.fixture
def other_ca(tmp_path: Path) -> Identity:
    return identity(tmp_path, "other", "127.0.0.1")


@pytest.fixture
def client_id(tmp_path: Path) -> Identity:
    return identity(tmp_path, "client", "gateway.example")


# -- the gateway served over TLS ------------------------------------------------------------


@asynccontextmanager
async def served(config: GatewayConfig) -> AsyncIterator[str]:
    """`cli.serve` as `trio-gateway serve` runs it (its own bound socket, the write fast
    path installed): yields the base URL hypercorn reports, drained and stopped on exit."""
    app = create_app(config)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT_S):
            binds: list[str] = await nursery.start(partial(cli.serve, app, config))
        try:
            yield binds[0]
        finally:
            app.gateway.shutdown.request_stop("test")


def count_fast_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the fast path's direct `os.write`s, to see which path a write took."""
    written: list[int] = []
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        written.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(socket_writes.os, "write", write)
    return written


async def stream_chat(url: str, verify: ssl.SSLContext | bool, **client: Any) -> str:
    """The text of one streamed chat completion, read event by event."""
    text = []
    async with httpx.AsyncClient(base_url=url, verify=verify, **client) as http:
        body = chat("hello", stream=True, max_tokens=20)
        async with http.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            assert response.http_version == "HTTP/1.1"
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    event = httpx.Response(200, content=line[6:]).json()
                    text.append(event["choices"][0]["delta"].get("content") or "")
                elif line.startswith("data: "):
                    assert line == "data: [DONE]"
    return "".join(text)


async def list_models(url: str, verify: ssl.SSLContext | bool) -> int:
    async with httpx.AsyncClient(base_url=url, verify=verify) as http:
        return (await http.get("/v1/models")).status_code


def causes(error: BaseException | None) -> str:
    """The messages of `error` and its causes (httpx's own message can be empty)."""
    said = []
    while error is not None:
        said.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(said)


def trusting(ca: str, client: Identity | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


async def test_the_gateway_serves_a_stream_over_tls_through_hypercorns_encryption(
    server_id: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = count_fast_writes(monkeypatch)
    config = GatewayConfig(port=0, certfile=server_id.cert, keyfile=server_id.key, mock_itl_ms=1.0)
    with trio.fail_after(WAIT_S):
        async with served(config) as url:
            assert url.startswith("https://127.0.0.1:")
            text = await stream_chat(url, trusting(server_id.ca))
            assert len(text.split()) == 20
            # Every byte went through the TLS stream: the fast path's raw os.write would
            # have put plaintext on an encrypted connection (and the client failed above).
            assert writes == []
            with pytest.raises(httpx.ConnectError) as refused:
                await list_models(url, True)  # the system store does not know this CA
            assert "CERTIFICATE_VERIFY_FAILED" in causes(refused.value)
            with pytest.raises(httpx.HTTPError):
                await list_models(url.replace("https://", "http://"), False)


async def test_plain_http_still_takes_the_fast_write_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counterpart of the test above: the counter does see the fast path when it runs."""
    writes = count_fast_writes(monkeypatch)
    with trio.fail_after(WAIT_S):
        async with served(GatewayConfig(port=0, mock_itl_ms=1.0)) as url:
            assert url.startswith("http://")
            await stream_chat(url, False)
    assert writes


async def test_the_gateway_requires_client_certificates_with_ca_certs(
    server_id: Identity, client_id: Identity
) -> None:
    config = GatewayConfig(
        port=0,
        certfile=server_id.cert,
        keyfile=server_id.key,
        ca_certs=client_id.ca,
        mock_itl_ms=1.0,
    )
    with trio.fail_after(WAIT_S):
        async with served(config) as url:
            text = await stream_chat(url, trusting(server_id.ca, client_id))
            assert len(text.split()) == 20
            # TLS 1.3: the server refuses a missing certificate after the client's handshake.
            with pytest.raises(httpx.HTTPError):
                await list_models(url, trusting(server_id.ca))
            assert await list_models(url, trusting(server_id.ca, client_id)) == 200


async def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """`trio-gateway ARGV` to its end."""
    command = [gateway_command()[0], *argv]
    with trio.fail_after(30):
        return await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    return lines[0]


@asynccontextmanager
async def processes(*flags: str) -> AsyncIterator[tuple[trio.Process, int]]:
    """`serve --processes 2 FLAGS` on a free port, once both children listen over HTTPS;
    every process killed on the way out if still there."""
    port = free_port()
    command = [*gateway_command(*flags), "--processes", "2"]
    command[command.index("--port") + 1] = str(port)
    children: list[int] = []
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
        )
        try:
            assert process.stderr is not None
            seen = b""
            with trio.fail_after(30):
                while seen.count(b"Running on https://") < 2:
                    data = await process.stderr.receive_some()
                    assert data, f"the gateway exited early: {seen.decode(errors='replace')}"
                    seen += data
            children += [int(pid) for pid in re.findall(rb"started \(pid (\d+)\)", seen)]
            nursery.start_soon(drain_pipe, process.stderr)
            yield process, port
        finally:
            if process.returncode is None:
                process.kill()
            for pid in children:  # each leads its own process group
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


async def test_serve_and_worker_say_a_bad_certificate_file_in_one_line(
    tmp_path: Path, server_id: Identity
) -> None:
    missing = str(tmp_path / "missing.pem")
    tls = ("--certfile", server_id.cert, "--keyfile", missing)
    serve = await run("serve", "--port", str(free_port()), *tls)
    assert serve.returncode == 2  # a bad setting, as for any other
    assert one_line(serve).startswith(f"trio-gateway: certfile: cannot load {server_id.cert}")
    for_processes = await run("serve", "--port", str(free_port()), "--processes", "2", *tls)
    assert for_processes.returncode == 2
    assert one_line(for_processes).startswith("trio-gateway: certfile: cannot load ")
    worker = await run("worker", "--port", "0", "--metrics-port", "0", *tls)
    assert worker.returncode == 2
    assert one_line(worker).startswith(f"trio-gateway: certfile: cannot load {server_id.cert}")
    half = await run("check-config", "--certfile", server_id.cert)
    assert half.returncode == 2
    assert one_line(half) == "trio-gateway: certfile: given without keyfile (TLS needs both)"
    checked = await run("check-config", *tls)
    assert checked.returncode == 2
    assert one_line(checked).startswith(f"trio-gateway: certfile: cannot load {server_id.cert}")
    bundle = ("--worker", "https://127.0.0.1:1/v1", "--upstream-ca-bundle", missing)
    checked = await run("check-config", *bundle)
    assert checked.returncode == 2
    assert one_line(checked).startswith(f"trio-gateway: upstream_ca_bundle: cannot load {missing}")


def test_check_config_masks_the_key_password_and_shows_the_paths(
    server_id: Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--certfile", server_id.cert, "--keyfile", server_id.key]
    assert cli.main(["check-config", *argv, "--keyfile-password", "hush"]) == 0
    out = capsys.readouterr().out
    assert f"certfile = {json.dumps(server_id.cert)}" in out
    assert 'keyfile_password = "****"' in out
    assert "hush" not in out


async def test_processes_serve_tls_on_the_shared_port(server_id: Identity) -> None:
    tls = ("--certfile", server_id.cert, "--keyfile", server_id.key)
    async with processes(*tls) as (process, port):
        with trio.fail_after(60):
            url = f"https://127.0.0.1:{port}"
            for _ in range(6):  # a connection each: the kernel spreads them by port
                text = await stream_chat(url, trusting(server_id.ca))
                assert len(text.split()) == 20
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


# -- upstreams over https -------------------------------------------------------------------


@asynccontextmanager
async def gateway_on(url: str, **settings: Any) -> AsyncIterator[tuple[Harness, OpenAIUpstream]]:
    """A gateway with one backend, `url`, built from the settings as `serve` builds it,
    once that backend has been probed (successfully or not)."""
    async with running_gateway(GatewayConfig(workers=(url,), **settings)) as harness:
        engine = harness.gateway.router.backends[0].engine
        assert isinstance(engine, OpenAIUpstream)
        await engine.wait_probes(1)
        yield harness, engine


async def test_an_https_upstream_with_a_custom_ca(server_id: Identity) -> None:
    with trio.fail_after(WAIT_S):
        async with (
            running_upstream(certfile=server_id.cert, keyfile=server_id.key) as upstream,
            gateway_on(upstream.url, upstream_ca_bundle=server_id.ca) as (harness, engine),
        ):
            assert upstream.url.startswith("https://")
            assert engine.available
            streamed = await harness.request("POST", CHAT, STREAM)
            unary = await harness.request("POST", CHAT, chat(model="up-a", max_tokens=3))
    assert streamed.status == 200
    assert "".join(streamed.tokens()) == expected_text(3, "up-a")
    assert unary.status == 200
    assert unary.json()["choices"][0]["message"]["content"] == expected_text(3, "up-a")


@pytest.mark.parametrize("case", ["wrong CA", "system store", "wrong host name"])
async def test_an_untrusted_https_upstream_is_unavailable(
    case: str,
    server_id: Identity,
    other_ca: Identity,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_gateway.upstream")
    served_id, trusted = {
        "wrong CA": (server_id, other_ca.ca),
        "system store": (server_id, ""),
        # Trusted CA, but the certificate names another host: hostname verification is on.
        "wrong host name": (identity(tmp_path, "named", "upstream.example"), None),
    }[case]
    ca_bundle = served_id.ca if trusted is None else trusted
    with trio.fail_after(WAIT_S):
        async with (
            running_upstream(certfile=served_id.cert, keyfile=served_id.key) as upstream,
            gateway_on(upstream.url, upstream_ca_bundle=ca_bundle) as (harness, engine),
        ):
            assert not engine.available
            refused = await harness.request("POST", CHAT, chat(model="m", stream=True))
            assert upstream.generations == []
    assert refused.status == 503
    assert refused.json()["error"]["type"] == "unavailable"
    problems = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert problems and "CERTIFICATE_VERIFY_FAILED" in problems[0], problems
    assert "Traceback" not in caplog.text


async def test_an_upstream_that_requires_a_client_certificate(
    server_id: Identity, client_id: Identity
) -> None:
    tls = {"certfile": server_id.cert, "keyfile": server_id.key, "client_ca": client_id.ca}
    with trio.fail_after(WAIT_S):
        async with running_upstream(**tls) as upstream:
            async with gateway_on(upstream.url, upstream_ca_bundle=server_id.ca) as (_, engine):
                assert not engine.available  # no certificate to show
            mtls = {
                "upstream_ca_bundle": server_id.ca,
                "upstream_client_cert": client_id.cert,
                "upstream_client_key": client_id.key,
            }
            async with gateway_on(upstream.url, **mtls) as (harness, engine):
                assert engine.available
                streamed = await harness.request("POST", CHAT, STREAM)
    assert streamed.status == 200
    assert "".join(streamed.tokens()) == expected_text(3, "up-a")


def test_bad_tls_files_are_one_line_naming_the_setting(tmp_path: Path) -> None:
    config = GatewayConfig(workers=("https://127.0.0.1:1/v1",), upstream_ca_bundle="nope.pem")
    with pytest.raises(ConfigError, match=r"^upstream_ca_bundle: cannot load nope.pem"):
        create_app(config)
    config = GatewayConfig(workers=("wss://127.0.0.1:1",), worker_client_cert="nope.pem")
    with pytest.raises(ConfigError, match=r"^worker_client_cert: cannot load nope.pem"):
        create_app(config)
    with pytest.raises(ConfigError, match=r"^certfile: cannot load "):
        WorkerServer(WorkerConfig(certfile="nope.pem", keyfile="nope.pem"))


# -- wss:// workers -------------------------------------------------------------------------


@asynccontextmanager
async def serving_worker(**settings: Any) -> AsyncIterator[WorkerServer]:
    server = WorkerServer(WorkerConfig(port=0, metrics_port=0, worker_id="w1", **settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            server.shutdown.request_stop("test")


class Said(logging.Handler):
    """Sets `said` at the first record: what a test waits on instead of polling the logs."""

    def __init__(self) -> None:
        super().__init__()
        self.said = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.said.set()


async def test_a_wss_worker(server_id: Identity, client_id: Identity) -> None:
    tls = {"certfile": server_id.cert, "keyfile": server_id.key}
    with trio.fail_after(WAIT_S):
        async with serving_worker(**tls, ca_certs=client_id.ca) as server:
            url = f"wss://127.0.0.1:{server.port}"
            settings = {
                "worker_ca_bundle": server_id.ca,
                "worker_client_cert": client_id.cert,
                "worker_client_key": client_id.key,
            }
            async with running_gateway(GatewayConfig(workers=(url,), **settings)) as harness:
                worker = harness.gateway.router.backends[0].engine
                assert isinstance(worker, RemoteWorker)
                await worker.wait_connected()
                streamed = await harness.request("POST", CHAT, chat(stream=True, max_tokens=5))
    assert streamed.status == 200
    assert len(streamed.tokens()) == 5


@pytest.mark.parametrize("case", ["wrong CA", "no client certificate", "plain ws"])
async def test_a_wss_worker_refuses_what_it_should(
    case: str,
    server_id: Identity,
    client_id: Identity,
    other_ca: Identity,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_gateway.ws_client")
    said = Said()
    logging.getLogger("trio_gateway.ws_client").addHandler(said)
    request.addfinalizer(lambda: logging.getLogger("trio_gateway.ws_client").removeHandler(said))
    tls = {"certfile": server_id.cert, "keyfile": server_id.key, "ca_certs": client_id.ca}
    with trio.fail_after(WAIT_S):
        async with serving_worker(**tls) as server:
            scheme = "ws" if case == "plain ws" else "wss"
            settings = {
                "worker_ca_bundle": other_ca.ca if case == "wrong CA" else server_id.ca,
                "worker_client_cert": "" if case == "no client certificate" else client_id.cert,
                "worker_client_key": "" if case == "no client certificate" else client_id.key,
            }
            url = f"{scheme}://127.0.0.1:{server.port}"
            async with running_gateway(GatewayConfig(workers=(url,), **settings)) as harness:
                worker = harness.gateway.router.backends[0].engine
                assert isinstance(worker, RemoteWorker)
                await said.said.wait()
                assert not worker.available
                refused = await harness.request("POST", CHAT, chat(model="mock"))
                # The worker goes on serving after a refused handshake.
                assert server.shutdown.ready
    assert refused.status == 503
    assert "Traceback" not in caplog.text
    if case == "wrong CA":
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.records[0].getMessage()


async def test_a_worker_hosts_an_https_upstream_with_a_custom_ca(server_id: Identity) -> None:
    with trio.fail_after(WAIT_S):
        async with running_upstream(certfile=server_id.cert, keyfile=server_id.key) as upstream:
            for ca_bundle, trusted in ((server_id.ca, True), ("", False)):
                settings = {"upstream": upstream.url, "upstream_ca_bundle": ca_bundle}
                async with serving_worker(**settings) as server:
                    engine = server.engine
                    assert isinstance(engine, OpenAIUpstream)
                    await engine.wait_probes(1)
                    assert engine.available is trusted
                    assert (engine.models == ("up-a", "up-b")) is trusted
