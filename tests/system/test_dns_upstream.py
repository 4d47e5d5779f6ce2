"""A `dns+http` backend through the system's resolver, against a real upstream on loopback:
`localhost` is resolved by `getaddrinfo` (from /etc/hosts, no network), its 127.0.0.1 member
serves, and the upstream sees the name, not the address, as its Host. Every wait is bounded."""

from __future__ import annotations

import trio

from tests.support.asgi_client import running_gateway
from tests.support.upstream_server import running_upstream
from trio_gateway.backends_config import BackendSpec
from trio_gateway.config import GatewayConfig
from trio_gateway.discovery.resolver import SystemResolver
from trio_gateway.engines.upstream.engine import OpenAIUpstream


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
