"""Configured backends in front of real test upstreams on loopback sockets, the gateway in
process: one model under an alias on two upstreams (the request renamed once, the answer's
bytes renamed back, `/v1/models` saying the alias), the entry's key sent, its
`max_model_len` enforced, its weight followed. Every wait is bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from tests.support.asgi_client import Harness, running_gateway
from tests.support.upstream_server import MockUpstream, running_upstream
from trio_gateway.backends_config import BackendSpec
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream


def aliased(name: str, upstream: MockUpstream, **fields: Any) -> BackendSpec:
    return BackendSpec(name=name, url=upstream.url, aliases=(("llama", "up-a"),), **fields)


@asynccontextmanager
async def gateway_over(*specs: BackendSpec, **settings: Any) -> AsyncIterator[Harness]:
    config = GatewayConfig(backends=specs, **settings)
    async with running_gateway(config) as harness:
        with trio.fail_after(10):
            for backend in harness.gateway.router.backends:
                engine = backend.engine
                assert isinstance(engine, OpenAIUpstream)
                await engine.wait_probes(1)
        yield harness


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_an_alias_is_renamed_going_up_and_coming_back() -> None:
    async with (
        running_upstream(api_key="sk-a") as one,
        running_upstream(api_key="sk-b") as two,
        gateway_over(
            aliased("one", one, api_key="sk-a"),
            aliased("two", two, api_key="sk-b"),
            routing_policy="round_robin",
        ) as harness,
    ):
        listing = await harness.request("GET", "/v1/models")
        assert [m["id"] for m in listing.json()["data"]] == ["llama"]
        unary = await harness.request("POST", "/v1/chat/completions", chat(max_tokens=3))
        assert unary.status == 200, bytes(unary.body)
        assert unary.json()["model"] == "llama"
        stream = await harness.request(
            "POST", "/v1/chat/completions", chat(stream=True, max_tokens=3)
        )
        assert stream.status == 200
        events = [orjson.loads(e) for e in stream.events() if e.startswith("{")]
        assert events and all(event["model"] == "llama" for event in events)
        assert b"up-a" not in bytes(stream.body)
        # Round robin: one each; each upstream saw its own name and its own key.
        for upstream in (one, two):
            (generation,) = upstream.generations
            assert generation.body["model"] == "up-a"
            assert generation.headers["authorization"] == f"Bearer {upstream.api_key}"
        unknown = await harness.request("POST", "/v1/chat/completions", chat(model="up-a"))
        assert unknown.status == 404  # an aliased name is served under its alias only


async def test_max_model_len_from_the_entry_is_enforced() -> None:
    async with (
        running_upstream(context_lengths={"up-a": 4096}) as upstream,
        gateway_over(aliased("one", upstream, max_model_len=(("llama", 16),))) as harness,
    ):
        assert harness.gateway.router.context_length("llama") == 16
        refused = await harness.request("POST", "/v1/chat/completions", chat(max_tokens=100))
        assert refused.status == 400
        assert upstream.generations == []


async def test_the_upstreams_own_length_shows_under_the_alias() -> None:
    async with (
        running_upstream(context_lengths={"up-a": 4096}) as upstream,
        gateway_over(aliased("one", upstream)) as harness,
    ):
        assert harness.gateway.router.context_length("llama") == 4096


async def test_weights_share_the_traffic() -> None:
    async with (
        running_upstream() as heavy,
        running_upstream() as light,
        gateway_over(
            aliased("heavy", heavy, weight=3),
            aliased("light", light),
            routing_policy="round_robin",
        ) as harness,
    ):
        for _ in range(8):
            answer = await harness.request("POST", "/v1/chat/completions", chat(max_tokens=1))
            assert answer.status == 200
        assert (len(heavy.generations), len(light.generations)) == (6, 2)
        # Per-backend series carry the configured name, not the URL.
        requests = "trio_gateway_backend_requests_total"
        success = {"model": "llama", "status": "success", "error_type": "none"}
        assert harness.metric(requests, backend="heavy", **success) == 6
        assert harness.metric(requests, backend="light", **success) == 2
        harness.gateway.refresh_gauges()
        assert harness.metric("trio_gateway_backend_up", backend="heavy") == 1
