"""An upstream's prompt is left to the upstream to judge: it tokenizes its own way (the
gateway's own checks: tests/trio/test_prompt_length.py)."""

from __future__ import annotations

import trio

from tests.support.asgi_client import running_gateway
from tests.support.upstream_server import running_upstream
from trio_gateway.engines.upstream.engine import OpenAIUpstream

CHAT = "/v1/chat/completions"


async def test_an_upstreams_prompt_is_left_to_the_upstream() -> None:
    # 64 tokens by its `max_model_len`; "y" * 400 is 100 of the mock's tokens, but the
    # upstream tokenizes its own way (here: one word, one token) and takes it.
    async with running_upstream(models=["up-a"], context_lengths={"up-a": 64}) as upstream:
        engine = OpenAIUpstream(upstream.url)
        async with running_gateway(engines=[engine]) as harness:
            with trio.fail_after(10):
                await engine.wait_probes(1)
                response = await harness.request(
                    "POST",
                    CHAT,
                    {"model": "up-a", "messages": [{"role": "user", "content": "y" * 400}]},
                )
    assert response.status == 200
    assert len(upstream.generations) == 1
