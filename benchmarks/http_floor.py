"""The floor under the gateway: a bare ASGI app on the same hypercorn, same box, same client.

    python benchmarks/http_floor.py [--requests 200] [--rounds 5] [--idle-streams 1000]

Two figures no gateway change can go below: time to the first SSE event of one request
(the gateway asked for one token with no prefill, `ttft_ms: 0`, so all of it is HTTP and
gateway), and RSS per idle open stream. The bare app (`app` below) reads the request and
answers with the same first write as the gateway (role + one token), then `[DONE]`, or
holds the stream open, as the gateway does for a 600 s token. Latency rounds alternate
between the two servers, so the box's noise hits both alike.
Prints a Markdown table and writes benchmarks/results/http_floor.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_throughput import rss_per_stream
from benchmarks.loadgen import (
    GatewayProcess,
    LoopbackProcess,
    environment,
    http_request,
    median,
    ms,
    raise_fd_limit,
    rss_kib,
    save,
)

ONE_TOKEN = {
    "model": "mock",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "mock": {"tokens": 1, "ttft_ms": 0},
}
FIRST_EVENT = (
    b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,"model":"mock",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
    b'\n\ndata: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":0,"model":"mock",'
    b'"choices":[{"index":0,"delta":{"content":"The"},"finish_reason":"stop"}]}\n\n'
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an SSE endpoint can do on hypercorn: read, answer, end (or hold)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": FIRST_EVENT, "more_body": True})
    if b"600000" in body:  # the idle-stream test's request: hold it open until the client goes
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


class BareHypercorn(LoopbackProcess):
    """`hypercorn --worker-class trio benchmarks.http_floor:app` on a free loopback port."""

    def __init__(self) -> None:
        exe = Path(sys.executable).parent / "hypercorn"
        super().__init__(
            lambda port: [
                *(str(exe), "--worker-class", "trio", "-b", f"127.0.0.1:{port}"),
                *("--backlog", "2048", "benchmarks.http_floor:app"),
            ],
            name="bare-hypercorn",
            cwd=Path(__file__).resolve().parent.parent,
        )


def gateway_process() -> GatewayProcess:
    return GatewayProcess("--mock-max-num-seqs", "4096")  # room for every idle stream


async def first_event_latency(port: int, requests: int) -> tuple[list[float], list[float]]:
    """Sequential requests on one keep-alive connection: (to first event, to the end)."""
    request = http_request(port, ONE_TOKEN)
    firsts: list[float] = []
    totals: list[float] = []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for _ in range(requests):
            sent = time.perf_counter()
            await stream.send_all(request)
            received = b""
            first = None
            while not received.endswith(b"0\r\n\r\n"):
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("the server closed the connection")
                received += data
                if first is None and b"data:" in received:
                    first = time.perf_counter() - sent
            assert first is not None and received.startswith(b"HTTP/1.1 200"), received[:200]
            firsts.append(first)
            totals.append(time.perf_counter() - sent)
    return firsts[10:], totals[10:]  # the first few warm caches up


async def main(requests: int, rounds: int, idle_streams: int) -> None:
    raise_fd_limit()
    servers: dict[str, Any] = {}
    results: dict[str, Any] = {"environment": environment()}
    try:
        servers["bare hypercorn"] = BareHypercorn()
        servers["gateway"] = gateway_process()
        latency: dict[str, dict[str, list[float]]] = {
            name: {"first": [], "total": []} for name in servers
        }
        with trio.fail_after(300):
            for index in range(rounds):
                print(f"latency round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
                for name, server in servers.items():
                    firsts, totals = await first_event_latency(server.port, requests)
                    latency[name]["first"] += firsts
                    latency[name]["total"] += totals
        results["latency"] = {
            name: {
                "requests": len(values["first"]),
                "first_event_p50_s": median(values["first"]),
                "response_p50_s": median(values["total"]),
            }
            for name, values in latency.items()
        }
    finally:
        for server in servers.values():
            server.stop()
    # Memory on fresh processes, one at a time.
    memory: dict[str, Any] = {}
    for name, start in (("bare hypercorn", BareHypercorn), ("gateway", gateway_process)):
        print(f"{name}: {idle_streams} idle streams ...", file=sys.stderr, flush=True)
        server = start()
        try:
            idle = rss_kib(server.pid)
            await first_event_latency(server.port, 20)  # warm up like the gateway's test
            memory[name] = dict(await rss_per_stream(server, idle_streams), idle_rss_kib=idle)
        finally:
            server.stop()
    results["memory"] = memory
    path = save("http_floor", results)

    print("\n| server | first event p50 ms | whole response p50 ms | idle RSS MiB | KiB/stream |")
    print("|---|---|---|---|---|")
    for name in servers:
        lat, mem = results["latency"][name], memory[name]
        print(
            f"| {name} | {ms(lat['first_event_p50_s'])} | {ms(lat['response_p50_s'])} "
            f"| {mem['idle_rss_kib'] / 1024:.1f} | {mem['kib_per_stream']} |"
        )
    gateway, bare = results["latency"]["gateway"], results["latency"]["bare hypercorn"]
    print(
        f"\ngateway over bare hypercorn, first event: "
        f"+{ms(gateway['first_event_p50_s'] - bare['first_event_p50_s'])} ms; per stream: "
        f"+{memory['gateway']['kib_per_stream'] - memory['bare hypercorn']['kib_per_stream']:.1f}"
        f" KiB\nsaved {path}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-streams", type=int, default=1000)
    args = parser.parse_args()
    trio.run(partial(main, args.requests, args.rounds, args.idle_streams))
