"""The gateway in front of a real engine: llama-cpp-python's server with SmolLM2-135M on CPU.

Every request goes three ways (as tests/test_lossless.py does with the mock): straight to
llama.cpp, through a gateway whose engine is `OpenAIUpstream(llama.cpp)` (the upstream path),
and through a gateway whose `RemoteWorker`'s worker hosts llama.cpp (`trio-gateway worker
--upstream`, the worker path), each gateway on hypercorn as `trio-gateway serve` runs it.
The answers must be llama.cpp's own, field by field, stream and unary, for every shape.
Requests are greedy (`temperature: 0`, `seed: 1`) and short (4-12 tokens) so the whole file
runs in seconds; every wait is bounded with `trio.fail_after`.

The server comes from `.ci/install_llamacpp.sh` (see tests/llamacpp_server.py): without it
these tests skip, unless TRIO_GATEWAY_REQUIRE_LLAMACPP=1 (as in CI).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import orjson
import pytest
import trio

from tests.support.asgi_client import Exchange
from tests.support.llamacpp_server import MODEL_ALIAS
from tests.support.serving import serving
from tests.support.tools import TOOLS
from trio_gateway.config import GatewayConfig, WorkerConfig
from trio_gateway.engines.upstream.engine import OpenAIUpstream
from trio_gateway.engines.ws_client import RemoteWorker
from trio_gateway.gateway import Gateway
from trio_gateway.worker.server import WorkerServer

pytestmark = pytest.mark.llamacpp

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
GREEDY: dict[str, Any] = {"model": MODEL_ALIAS, "temperature": 0, "seed": 1}
# One short answer takes well under a second on 2 idle cores, but llama.cpp's threads slow
# down a hundredfold when other processes keep both cores busy.
REQUEST_TIMEOUT = 60.0
SETUP_TIMEOUT = 20.0
# A whole test, setup and teardown included: a few requests at most.
TEST_TIMEOUT = 6 * REQUEST_TIMEOUT
# llama.cpp draws a fresh `id` (`chatcmpl-<uuid>`, `cmpl-<uuid>`, also inside each tool
# call's id) and `created` (the clock) for every call, so they differ between any two calls,
# two straight to llama.cpp included. The gateway passes the upstream's through unchanged
# (`check_ids` sees llama.cpp's form through it); every other field must be equal.
PER_CALL = ("id", "created")


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {**GREEDY, "messages": [{"role": "user", "content": content}], **extra}


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {**GREEDY, "prompt": prompt, **extra}


# name: (path, body, streams only). The facts each must hold are in `check_facts`.
SHAPES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "chat": (CHAT, chat("Say hello.", max_tokens=8), False),
    "completions": (COMPLETIONS, completion("The capital of France is", max_tokens=8), False),
    "chat logprobs": (
        CHAT,
        chat("Say hello.", max_tokens=4, logprobs=True, top_logprobs=2),
        False,
    ),
    "completions logprobs": (
        COMPLETIONS,
        completion("The capital of France is", max_tokens=4, logprobs=2),
        False,
    ),
    # A named tool_choice: llama.cpp forces a call to it with a grammar.
    "named tool": (
        CHAT,
        chat(
            "Search for trio.",
            max_tokens=12,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "search"}},
        ),
        False,
    ),
    # The gateway asks every stream upstream for usage; here the client asks too, so a usage
    # event is the client's to get. (llama-cpp-python 0.3.36 sends none either way.)
    "include usage": (
        CHAT,
        chat("Say hello.", max_tokens=8, stream_options={"include_usage": True}),
        True,
    ),
}
CASES = [
    pytest.param(shape, stream, id=f"{shape}-{'stream' if stream else 'unary'}")
    for shape, (_, _, streams_only) in SHAPES.items()
    for stream in ((True,) if streams_only else (True, False))
]


@dataclass
class Paths:
    direct: httpx.AsyncClient  # llama.cpp's own /v1
    upstream: httpx.AsyncClient  # a gateway whose engine is OpenAIUpstream(llama.cpp)
    worker: httpx.AsyncClient  # a gateway whose worker hosts llama.cpp
    upstream_gateway: Gateway
    worker_gateway: Gateway
    worker_server: WorkerServer

    def via(self, path: str) -> tuple[httpx.AsyncClient, Gateway]:
        if path == "upstream":
            return self.upstream, self.upstream_gateway
        return self.worker, self.worker_gateway

    async def wait_idle(self) -> None:
        """Every ledger empty, and the gauges at zero."""
        with trio.fail_after(REQUEST_TIMEOUT):
            await self.upstream_gateway.ledger.wait_empty()
            await self.worker_gateway.ledger.wait_empty()
            await self.worker_server.ledger.wait_empty()
        for gateway in (self.upstream_gateway, self.worker_gateway):
            assert metric(gateway, "trio_gateway_inflight_requests", model=MODEL_ALIAS) == 0


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@asynccontextmanager
async def three_paths(llamacpp_url: str) -> AsyncIterator[Paths]:
    relay_engine = OpenAIUpstream(llamacpp_url)
    upstream_gateway = Gateway(GatewayConfig(port=1), [relay_engine])
    worker = WorkerServer(WorkerConfig(port=0, metrics_port=0, upstream=llamacpp_url))
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            with trio.fail_after(SETUP_TIMEOUT):
                await nursery.start(worker.serve)
            remote = RemoteWorker(f"ws://127.0.0.1:{worker.port}")
            worker_gateway = Gateway(GatewayConfig(port=1), [remote])
            async with (
                serving(upstream_gateway) as upstream_url,
                serving(worker_gateway) as worker_url,
            ):
                with trio.fail_after(SETUP_TIMEOUT):
                    await relay_engine.wait_probes(1)
                    await remote.wait_connected()
                assert relay_engine.models == remote.models == (MODEL_ALIAS,)
                async with (
                    httpx.AsyncClient(base_url=llamacpp_url, timeout=REQUEST_TIMEOUT) as direct,
                    httpx.AsyncClient(
                        base_url=upstream_url + "/v1", timeout=REQUEST_TIMEOUT
                    ) as via_upstream,
                    httpx.AsyncClient(
                        base_url=worker_url + "/v1", timeout=REQUEST_TIMEOUT
                    ) as via_worker,
                ):
                    yield Paths(
                        direct, via_upstream, via_worker, upstream_gateway, worker_gateway, worker
                    )
            nursery.cancel_scope.cancel()


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    """The answer's documents: a stream's events (its `[DONE]` checked and left out), or the
    one unary body."""
    with trio.fail_after(REQUEST_TIMEOUT):
        response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    content = response.content
    if not body["stream"]:
        assert response.headers["content-type"].startswith("application/json")
        return [orjson.loads(content)]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert content.endswith(b"data: [DONE]\n\n"), content[-200:]
    blocks = content.split(b"\n\n")
    assert blocks[-2:] == [b"data: [DONE]", b""]
    events = []
    for block in blocks[:-2]:
        assert block.startswith(b"data: ") and block != b"data: [DONE]", block
        events.append(orjson.loads(block[len(b"data: ") :]))
    return events


def comparable(document: Any) -> Any:
    """The document without the fields each call draws afresh (`PER_CALL`), at every depth."""
    if isinstance(document, dict):
        return {k: comparable(v) for k, v in document.items() if k not in PER_CALL}
    if isinstance(document, list):
        return [comparable(item) for item in document]
    return document


def differences(via: Any, direct: Any, where: str = "") -> list[str]:
    """Where two documents differ, as `path: via != direct` (for the failure message)."""
    if isinstance(via, dict) and isinstance(direct, dict):
        found = []
        for key in sorted(via.keys() | direct.keys()):
            if key not in via or key not in direct:
                found.append(f"{where}.{key}: only in {'via' if key in via else 'direct'}")
            else:
                found += differences(via[key], direct[key], f"{where}.{key}")
        return found
    if isinstance(via, list) and isinstance(direct, list):
        found = [f"{where}: {len(via)} items != {len(direct)}"] if len(via) != len(direct) else []
        for index, (a, b) in enumerate(zip(via, direct, strict=False)):
            found += differences(a, b, f"{where}[{index}]")
        return found
    return [] if via == direct else [f"{where}: {via!r} != {direct!r}"]


def check_ids(documents: list[Any], path: str) -> None:
    """llama.cpp's id, one per answer, in its own form, also at the end of a tool call's id
    (`call__0_search_cmpl-<the same uuid>`): not one the gateway made up."""
    ids = {document["id"] for document in documents}
    assert len(ids) == 1, ids
    [answer_id] = ids
    assert answer_id.startswith("chatcmpl-" if path == CHAT else "cmpl-"), answer_id
    uuid = answer_id.split("-", 1)[1]
    for document in documents:
        for choice in document["choices"]:
            message = choice.get("message") or choice.get("delta") or {}
            for tool_call in message.get("tool_calls") or []:
                if "id" in tool_call:
                    assert tool_call["id"].endswith(uuid), (tool_call["id"], answer_id)


def check_facts(shape: str, documents: list[Any], stream: bool) -> None:
    """The comparison is only as good as what llama.cpp answers: check it answers the shape."""
    text, finishes, tools, top_logprobs = "", [], set(), []
    usage = [document["usage"] for document in documents if document.get("usage")]
    for document in documents:
        for choice in document["choices"]:
            assert choice["index"] == 0
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
            message = choice.get("delta" if stream else "message") or {}
            text += message.get("content") or choice.get("text") or ""
            tools |= {call["function"]["name"] for call in message.get("tool_calls") or []}
            logprobs = choice.get("logprobs") or {}
            if "content" in logprobs:  # chat
                top_logprobs += [len(entry["top_logprobs"]) for entry in logprobs["content"]]
            elif logprobs:  # completions
                top_logprobs += [len(top) for top in logprobs["top_logprobs"]]
    if shape == "named tool":
        assert finishes == ["tool_calls"] and tools == {"search"}, (finishes, tools)
    else:
        assert text and finishes == ["length"] and not tools, (text, finishes, tools)
    if shape.endswith("logprobs"):
        assert len(top_logprobs) == 4 and all(1 <= n <= 2 for n in top_logprobs), top_logprobs
    else:
        assert not top_logprobs
    if not stream:
        assert len(documents) == 1 and usage and usage[0]["completion_tokens"] > 0


@pytest.mark.parametrize(("shape", "stream"), CASES)
async def test_every_shape_is_llamacpps_own_on_both_paths(
    llamacpp_url: str, shape: str, stream: bool
) -> None:
    path, body, _ = SHAPES[shape]
    body = {**body, "stream": stream}
    async with three_paths(llamacpp_url) as paths:
        # llama.cpp keeps the KV cache of the last request: a prompt it has not just seen is
        # read in one batch, a repeated one reuses all but its last token, which is read
        # alone. The two give the same text but logprobs that differ in the second decimal,
        # so every call compared is a repeat, after this one. (Two tokens: after one only,
        # the next call would reuse this one's logits, as a fresh read.)
        await post(paths.direct, path, {**body, "max_tokens": 2, "stream": False})
        direct = await post(paths.direct, path, body)
        check_ids(direct, path)
        check_facts(shape, direct, stream)
        for name in ("upstream", "worker"):
            via = await post(paths.via(name)[0], path, body)
            check_ids(via, path)
            found = differences(comparable(via), comparable(direct))
            assert not found, f"{shape} through the {name} path:\n" + "\n".join(found)
        await paths.wait_idle()


def lines_of(response: httpx.Response) -> AbstractAsyncContextManager[AsyncGenerator[str]]:
    """The response's lines, closed on the way out (a stream left early included)."""
    return aclosing(cast(AsyncGenerator[str], response.aiter_lines()))


async def first_token(lines: AsyncIterator[str]) -> None:
    """Read a stream's lines until its first event with text."""
    async for line in lines:
        if line.startswith("data: ") and Exchange(body=bytearray(line.encode())).tokens():
            return
    raise AssertionError("the stream ended without a token")


# httpcore leaves its body async generators to the garbage collector when a stream is left
# early, which trio reports as a ResourceWarning: httpx's leftovers, not the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("path", ["upstream", "worker"])
async def test_a_client_leaving_a_long_stream_frees_the_engine(
    llamacpp_url: str, path: str
) -> None:
    async with three_paths(llamacpp_url) as paths:
        client, gateway = paths.via(path)
        # 1500 tokens, EOS banned so it cannot stop early: ~50 s on 2 idle cores, run out.
        long = chat(
            "Write a very long story about a dragon.",
            max_tokens=1500,
            stream=True,
            logit_bias={"2": -100},  # <|im_end|>
        )
        with trio.fail_after(REQUEST_TIMEOUT):
            async with client.stream("POST", CHAT, json=long) as response:
                assert response.status_code == 200
                async with lines_of(response) as lines:
                    await first_token(lines)
        await paths.wait_idle()  # the worker's ledger too: its generation was cancelled

        # llama.cpp serves one request at a time: this one starts only once the long one
        # has stopped, which it does when it sees its connection closed, between tokens.
        short = chat("Say hello.", max_tokens=16, stream=True)
        started = trio.current_time()
        with trio.fail_after(REQUEST_TIMEOUT):
            async with client.stream("POST", CHAT, json=short) as response:
                assert response.status_code == 200
                async with lines_of(response) as lines:
                    await first_token(lines)
                    first = trio.current_time()
                    tokens = 1
                    async for line in lines:
                        tokens += len(Exchange(body=bytearray(line.encode())).tokens())
                    last = trio.current_time()
        await paths.wait_idle()
        assert tokens > 2
        # Had the long stream gone on, this first token would have waited for its other
        # 1499 tokens, at (at least) the pace this stream ran at, which scales with how
        # busy the machine is. Well under that: a tenth, and never less than 2 s.
        pace = (last - first) / (tokens - 1)
        assert first - started < max(1499 * pace / 10, 2.0), (first - started, pace)
        assert metric(gateway, "trio_gateway_disconnected_clients_total", model=MODEL_ALIAS) == 1
