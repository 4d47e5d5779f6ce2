"""`dns+` backends through the system's resolver, against real upstreams and workers on
loopback: `localhost` is resolved by `getaddrinfo` (from /etc/hosts, no network), its
127.0.0.1 member serves, the upstream sees the name, not the address, as its Host, and over
TLS the certificate checked is the name's. Every wait is bounded."""

from __future__ import annotations

from pathlib import Path

import trio
import trustme

from tests.support.asgi_client import running_gateway
from tests.support.upstream_server import running_upstream
from trio_gateway.backends_config import BackendSpec
from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.discovery.resolver import SystemResolver
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.worker.server import WorkerServer


async def test_the_system_resolver_finds_loopback() -> None:
    assert "127.0.0.1" in await SystemResolver().resolve("localhost", 80)


async def test_a_dns_upstream_is_dialled_by_address_and_named_by_its_name() -> None:
    async with running_upstream() as upstream:
        port = int(upstream.url.rsplit(":", 1)[1].split("/", 1)[0])
        entry = BackendSpec(name="local", url=f"dns+http://localhost:{port}/v1")
        config = GatewayConfig(backends=(entry,), dns_refresh_s=0.5)
        async with running_gateway(config) as harness:
            member = harness.gateway.router.find(f"local/127.0.0.1:{port}")
            assert member is not None and member.label == "local"
            assert isinstance(member.engine, OpenAIUpstream)
            with trio.fail_after(10):
                await member.engine.wait_probes(1)
            assert member.engine.available
            chat = {"model": "up-a", "messages": [{"role": "user", "content": "hi"}]}
            answer = await harness.request("POST", "/v1/chat/completions", chat)
            assert answer.status == 200, bytes(answer.body)
            with trio.move_on_after(1.2):  # two more resolutions: the same set, no change
                await trio.sleep_forever()
            assert harness.gateway.router.find(f"local/127.0.0.1:{port}") is member
        assert {request.headers["host"] for request in upstream.requests} == {f"localhost:{port}"}
        assert upstream.generations[0].body["model"] == "up-a"


# -- over TLS: each member checks the certificate of the name, not of its address -----------


def name_only_identity(tmp_path: Path) -> tuple[str, str, str]:
    """A CA, and a certificate it issued for `localhost` only (no IP address in it)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    paths = [tmp_path / f"{part}.pem" for part in ("ca", "cert", "key")]
    ca.cert_pem.write_to_path(str(paths[0]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


async def test_a_dns_https_member_checks_the_names_certificate(tmp_path: Path) -> None:
    ca, cert, key = name_only_identity(tmp_path)
    with trio.fail_after(20):
        async with running_upstream(certfile=cert, keyfile=key) as upstream:
            port = int(upstream.url.rsplit(":", 1)[1].split("/", 1)[0])
            entry = BackendSpec(name="tls", url=f"dns+https://localhost:{port}/v1")
            config = GatewayConfig(backends=(entry,), upstream_ca_bundle=ca)
            async with running_gateway(config) as harness:
                member = harness.gateway.router.find(f"tls/127.0.0.1:{port}")
                assert member is not None and isinstance(member.engine, OpenAIUpstream)
                await member.engine.wait_probes(1)
                assert member.engine.available  # 127.0.0.1 dialled, localhost verified
                chat = {"model": "up-a", "messages": [{"role": "user", "content": "hi"}]}
                answer = await harness.request("POST", "/v1/chat/completions", chat)
    assert answer.status == 200, bytes(answer.body)


async def test_a_dns_wss_member_checks_the_names_certificate(tmp_path: Path) -> None:
    ca, cert, key = name_only_identity(tmp_path)
    worker = WorkerServer(
        WorkerConfig(port=0, metrics_port=0, worker_id="pod-0", certfile=cert, keyfile=key)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            config = GatewayConfig(
                workers=(f"dns+wss://localhost:{worker.port}",), worker_ca_bundle=ca
            )
            async with running_gateway(config) as harness:
                (backend,) = [
                    b for b in harness.gateway.router.backends if "127.0.0.1" in b.engine.url
                ]
                assert isinstance(backend.engine, RemoteWorker)
                await backend.engine.wait_connected()
                assert backend.name == "pod-0"  # known by its hello
                assert backend.label == f"dns+wss://localhost:{worker.port}"
                chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
                answer = await harness.request("POST", "/v1/chat/completions", chat)
            worker.shutdown.request_stop("test")
    assert answer.status == 200, bytes(answer.body)
