"""The prompt counts against the context length, where the gateway knows the engine's count.

The in-process mock and workers hosting it count four characters a token
(`prompt_token_count`): a prompt plus `max_tokens` over their `max_model_len` is vLLM's
400, before anything starts. An upstream tokenizes its own way: it judges for itself.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.worker_harness import InMemoryWorker, running_worker
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock_answer import prompt_token_count

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat_of(content: str, **extra: object) -> dict[str, object]:
    return {"model": "mock", "messages": [{"role": "user", "content": content}], **extra}


async def test_a_2_mib_prompt_is_refused_under_the_default_context_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        response = await harness.request("POST", CHAT, chat_of("x" * (2 * 1024 * 1024)))
    assert response.status == 400
    error = response.json()["error"]
    prompt_tokens = prompt_token_count("user: " + "x" * (2 * 1024 * 1024))
    assert error["message"] == (
        "This model's maximum context length is 32768 tokens. However, you requested "
        f"{prompt_tokens} tokens in the messages, Please reduce the length of the messages."
    )
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    )


async def test_prompt_plus_max_tokens_over_the_mocks_context_is_400_and_at_it_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    content = "y" * 94  # "user: " + 94 characters: 25 tokens
    prompt_tokens = prompt_token_count("user: " + content)
    assert prompt_tokens == 25
    async with running_gateway(GatewayConfig(max_model_len=64)) as harness:
        over = await harness.request("POST", CHAT, chat_of(content, max_tokens=40))
        over_new = await harness.request("POST", CHAT, chat_of(content, max_completion_tokens=40))
        at = await harness.request("POST", CHAT, chat_of(content, max_tokens=39))
        unbounded = await harness.request("POST", CHAT, chat_of(content, mock={"tokens": 2}))
        completion = await harness.request(
            "POST", COMPLETIONS, {"model": "mock", "prompt": "z" * 100, "max_tokens": 40}
        )
    assert over.status == 400
    assert over.json()["error"]["message"] == (
        "This model's maximum context length is 64 tokens. However, you requested 65 tokens "
        "(25 in the messages, 40 in the completion). Please reduce the length of the messages "
        "or completion."
    )
    assert over.json()["error"]["code"] == "context_length_exceeded"
    assert over_new.status == 400
    assert at.status == 200
    assert at.json()["usage"]["prompt_tokens"] == prompt_tokens  # the count is the mock's
    assert unbounded.status == 200  # 25 < 64: no max_tokens, room is left
    assert completion.status == 400
    assert completion.json()["error"]["param"] == "prompt"
    assert "(25 in the prompt, 40 in the completion)" in completion.json()["error"]["message"]


async def test_a_worker_hosting_the_mock_is_checked_at_the_gateway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_worker("w1", max_model_len=64) as server:
        worker = InMemoryWorker("ws://w1", handler=server._handle)
        async with running_gateway(engines=[worker]) as harness:
            await worker.wait_connected()
            over = await harness.request("POST", CHAT, chat_of("y" * 94, max_tokens=40))
            at = await harness.request("POST", CHAT, chat_of("y" * 94, max_tokens=39))
    assert over.status == 400
    assert over.json()["error"]["code"] == "context_length_exceeded"
    assert at.status == 200
    assert server.engine.active == 0
