"""Embeddings and vLLM's (de)tokenizing on real sockets, on every path to an OpenAI server.

The upstream is a trio-gateway serving its mock on hypercorn (`support/mock_upstream_paths`),
which answers `/v1/embeddings` under its `/v1` and `/tokenize`, `/detokenize` at its root as
vLLM does. The same request goes to it directly, through a gateway relaying to it (base URL
`.../v1`: the tokenizer routes must lose the `/v1`), and through a gateway whose worker
relays to it; the answers must be equal byte for byte after JSON parsing. The openai SDK's
`embeddings.create` then works through both gateways.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
import trio

from tests.support.asgi_client import running_gateway
from tests.support.mock_upstream_paths import three_paths
from tests.support.serving import in_thread, serving
from tests.support.upstream_server import running_upstream
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer.non_generative import tokenize
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.gateway import Gateway

CASES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/embeddings", {"model": "mock", "input": "The weather is fine."}),
    ("/v1/embeddings", {"model": "mock", "input": ["a", "bb"], "dimensions": 8}),
    ("/v1/embeddings", {"model": "mock", "input": [[1, 2, 3]], "encoding_format": "base64"}),
    ("/tokenize", {"model": "mock", "prompt": "Hello, relay!", "return_token_strs": True}),
    ("/tokenize", {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}),
    # Spelled ids and a hashed one (a piece outside ASCII: U+FFFD back).
    ("/detokenize", {"model": "mock", "tokens": tokenize("Hello, é!")[0]}),
]


@pytest.mark.parametrize(
    ("path", "body"), CASES, ids=[f"{p} {i}" for i, (p, _) in enumerate(CASES)]
)
async def test_each_path_answers_as_the_upstream_itself(path: str, body: dict[str, Any]) -> None:
    async with three_paths() as paths, httpx.AsyncClient(timeout=10) as client:
        answers = []
        for base in (paths.direct, paths.relayed, paths.worker):
            response = await client.post(base + path, json=body)
            assert response.status_code == 200, (base, response.text)
            assert response.headers["content-type"].startswith("application/json")
            answers.append(response.json())
        direct, relayed, via_worker = answers
        assert relayed == direct
        assert via_worker == direct
        if path == "/tokenize":
            assert direct["max_model_len"] == 32768 and direct["count"] == len(direct["tokens"])


async def test_an_upstreams_refusal_keeps_its_status_and_message() -> None:
    async with three_paths() as paths, httpx.AsyncClient(timeout=10) as client:
        bad = {"model": "mock", "input": "x", "dimensions": 4096}  # over the mock's own
        errors = []
        for base in (paths.direct, paths.relayed, paths.worker):
            response = await client.post(base + "/v1/embeddings", json=bad)
            assert response.status_code == 400, (base, response.text)
            errors.append(response.json()["error"])
        direct, relayed, via_worker = errors
        assert relayed == direct and direct["param"] == "dimensions"
        # The worker plane's error frame has no `param` (for every endpoint): the rest holds.
        assert via_worker == direct | {"param": None}


async def test_openai_sdk_embeddings_through_the_gateway() -> None:
    async with three_paths() as paths:
        direct = openai.OpenAI(base_url=paths.direct + "/v1", api_key="unused", max_retries=0)
        expected = await in_thread(
            lambda: direct.embeddings.create(
                model="mock", input=["trio", "gateway"], encoding_format="float"
            )
        )
        for url in (paths.relayed, paths.worker):
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

            def create(client: openai.OpenAI = client) -> Any:
                # The SDK asks for base64 unless told otherwise, and decodes it to floats.
                return client.embeddings.create(model="mock", input=["trio", "gateway"])

            answer = await in_thread(create)
            assert [item.index for item in answer.data] == [0, 1]
            assert [item.embedding for item in answer.data] == [
                item.embedding for item in expected.data
            ]
            assert answer.usage.prompt_tokens == expected.usage.prompt_tokens == 3
            shortened = await in_thread(
                lambda client=client: client.embeddings.create(
                    model="mock", input="trio", dimensions=16
                )
            )
            assert len(shortened.data[0].embedding) == 16


async def test_an_alias_is_the_upstreams_name_upstream_and_the_clients_in_the_answer() -> None:
    upstream = Gateway(GatewayConfig(port=1), [MockEngine(("upstream-name",))])
    with trio.fail_after(20):
        async with serving(upstream) as direct:
            engine = OpenAIUpstream(direct + "/v1", aliases={"served": "upstream-name"})
            async with serving(Gateway(GatewayConfig(port=1), [engine])) as relayed:
                await engine.wait_probes(1)
                async with httpx.AsyncClient(timeout=10) as client:
                    listed = (await client.get(relayed + "/v1/models")).json()
                    [model] = listed["data"]
                    assert model["id"] == "served" and model["max_model_len"] == 32768
                    body = {"model": "served", "input": "x"}
                    answer = (await client.post(relayed + "/v1/embeddings", json=body)).json()
                    own = await client.post(
                        direct + "/v1/embeddings", json={"model": "upstream-name", "input": "x"}
                    )
                    assert answer == own.json() | {"model": "served"}
                    tokenized = await client.post(
                        relayed + "/tokenize", json={"model": "served", "prompt": "abc"}
                    )
                    assert tokenized.status_code == 200 and tokenized.json()["count"] == 1


# vLLM's answers, fields the gateway does not know included (`id`, `created`, `token_strs`).
VLLM_ANSWERS: dict[str, Any] = {
    "/v1/embeddings": {
        "id": "embd-7",
        "object": "list",
        "created": 1700000000,
        "model": "up-a",
        "data": [{"index": 0, "object": "embedding", "embedding": [0.25, -0.5]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0},
    },
    "/tokenize": {"count": 2, "max_model_len": 4096, "tokens": [9, 8], "token_strs": None},
    "/detokenize": {"prompt": "hello"},
}


async def test_an_upstream_gets_the_body_as_sent_at_vllms_paths_and_its_answer_is_relayed() -> None:
    bodies: dict[str, dict[str, Any]] = {
        "/v1/embeddings": {"model": "up-a", "input": [[1, 2, 3]], "truncate_prompt_tokens": 2},
        "/tokenize": {"model": "up-a", "prompt": "hi", "add_special_tokens": False},
        "/detokenize": {"model": "up-a", "tokens": [9, 8]},
    }
    async with running_upstream(
        models=["up-a"], api_key="up-key", whole_answers=VLLM_ANSWERS, graceful_timeout=0.5
    ) as upstream:
        engine = OpenAIUpstream(upstream.url, api_key="up-key")
        async with running_gateway(engines=[engine]) as harness:
            with trio.fail_after(10):
                await engine.wait_probes(1)
                for path, body in bodies.items():
                    answer = await harness.request(
                        "POST", path, body, headers={"x-request-id": path}
                    )
                    assert answer.status == 200, (path, answer.body)
                    recorded = upstream.generations[-1]
                    assert recorded.path == path  # /tokenize at the root, not under /v1
                    assert recorded.body == body  # as sent: no `stream` added
                    assert recorded.headers["authorization"] == "Bearer up-key"
                    assert recorded.headers["x-request-id"] == path
                    assert bytes(answer.body) == recorded.answer  # byte for byte
                    backend = {"backend": engine.url, "model": "up-a"}
                    ok = backend | {"status": "success", "error_type": "none"}
                    series = harness.metric("trio_gateway_backend_requests_total", **ok)
                    assert series == list(bodies).index(path) + 1
