"""What an engine sends reaches the client as it was sent, on every path to an OpenAI server.

One upstream: a trio-gateway serving its mock on hypercorn, an OpenAI-compatible server that
can answer with reasoning, tool calls, logprobs and several choices. The same request goes to
it directly, through a gateway that relays it (`--worker http://.../v1`), and through a
gateway whose worker hosts it (`trio-gateway worker --upstream`); the answers must be equal
field by field, stream and unary. Only `created` (a clock reading) may differ between two
calls; the mock, like vLLM, takes its response id from the X-Request-Id the gateway passes on.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.mock_upstream_paths import three_paths
from tests.support.serving import in_thread
from tests.support.tools import TOOLS


def ask(stream: bool, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "mock",
        "messages": [{"role": "user", "content": "What is the weather like?"}],
        "max_tokens": 12,
        "stream": stream,
        **extra,
    }
    if stream:
        body.setdefault("stream_options", {"include_usage": True})
    return body


SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "no usage asked": {"stream_options": None},
    "reasoning": {"mock": {"reasoning_tokens": 4, "tokens": 5}},
    "tool calls": {"tools": TOOLS, "tool_choice": "auto", "mock": {"tokens": 0, "tool_calls": 1}},
    "logprobs": {"logprobs": True, "top_logprobs": 3},
    "n=2": {"n": 2},
    "unknown fields": {"min_p": 0.05, "chat_template_kwargs": {"enable_thinking": True}},
}


def comparable(document: Any) -> Any:
    """The document without `created`, the one field two calls may not share."""
    if isinstance(document, dict):
        return {k: comparable(v) for k, v in document.items() if k != "created"}
    if isinstance(document, list):
        return [comparable(item) for item in document]
    return document


def stream_events(body: bytes) -> list[Any]:
    events = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: ") and block != b"data: [DONE]":
            events.append(comparable(orjson.loads(block[6:])))
    assert body.endswith(b"data: [DONE]\n\n")
    return events


async def call(client: httpx.AsyncClient, url: str, body: dict[str, Any], rid: str) -> Any:
    body = {k: v for k, v in body.items() if v is not None}
    response = await client.post(
        url + "/v1/chat/completions", json=body, headers={"x-request-id": rid}
    )
    assert response.status_code == 200, response.text
    if body["stream"]:
        return stream_events(response.content)
    return comparable(response.json())


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
async def test_every_shape_is_relayed_field_for_field(stream: bool) -> None:
    async with three_paths() as paths, httpx.AsyncClient(timeout=10) as client:
        for index, (shape, extra) in enumerate(SHAPES.items()):
            body = ask(stream, **extra)
            rid = f"lossless-{index}"
            direct = await call(client, paths.direct, body, rid)
            relayed = await call(client, paths.relayed, body, rid)
            via_worker = await call(client, paths.worker, body, rid)
            assert relayed == direct, shape
            assert via_worker == direct, shape


async def test_the_answers_hold_what_was_asked() -> None:
    """The comparison above is only as good as what the upstream sends: check it sends it."""
    async with three_paths() as paths, httpx.AsyncClient(timeout=10) as client:
        unary = [
            await call(client, paths.relayed, ask(False, **SHAPES[shape]), shape)
            for shape in ("reasoning", "tool calls", "logprobs", "n=2")
        ]
        reasoning, tools, logprobs, two = unary
        assert reasoning["choices"][0]["message"]["reasoning_content"]
        assert reasoning["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
        call_ = tools["choices"][0]["message"]["tool_calls"][0]
        assert call_["function"]["name"] == "search"
        assert tools["choices"][0]["finish_reason"] == "tool_calls"
        assert len(logprobs["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3
        assert [choice["index"] for choice in two["choices"]] == [0, 1]
        streamed = await call(client, paths.worker, ask(True, **SHAPES["tool calls"]), "t")
        deltas = [e["choices"][0]["delta"] for e in streamed if e["choices"]]
        assert any("tool_calls" in delta for delta in deltas)
        assert streamed[-1]["usage"]["completion_tokens"] > 0


async def test_openai_sdk_sees_tool_calls_through_the_gateway() -> None:
    async with three_paths() as paths:
        for url in (paths.relayed, paths.worker):
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

            def unary(client: openai.OpenAI = client) -> Any:
                return client.chat.completions.create(
                    model="mock",
                    messages=[{"role": "user", "content": "search for trio"}],
                    tools=TOOLS,  # type: ignore[arg-type]
                    extra_body={"mock": {"tokens": 0, "tool_calls": 1}},
                )

            def streamed(client: openai.OpenAI = client) -> tuple[str, str]:
                name, arguments = "", ""
                for chunk in client.chat.completions.create(
                    model="mock",
                    messages=[{"role": "user", "content": "search for trio"}],
                    tools=TOOLS,  # type: ignore[arg-type]
                    stream=True,
                    extra_body={"mock": {"tokens": 0, "tool_calls": 1}},
                ):
                    calls = chunk.choices[0].delta.tool_calls if chunk.choices else None
                    for delta_call in calls or []:
                        function = delta_call.function
                        name += (function and function.name) or ""
                        arguments += (function and function.arguments) or ""
                return name, arguments

            answer = await in_thread(unary)
            [tool_call] = answer.choices[0].message.tool_calls
            assert tool_call.function.name == "search"
            assert orjson.loads(tool_call.function.arguments)
            name, arguments = await in_thread(streamed)
            assert name == "search"
            assert orjson.loads(arguments) == orjson.loads(tool_call.function.arguments)
