"""Tokens/s, TTFT and ITL through the gateway with its mock engine, and RSS per open stream.

    python benchmarks/gateway_throughput.py [--seconds 10] [--concurrency 1,32,256]
        [--processes 1,2]

Load: streaming chat, 100 tokens at 10 ms per token, 5 ms prefill (the load the Dynamo
comparison used). At each concurrency c, `wrk -t1` holds c - p connections for throughput
while this script's raw-socket client holds p = min(c, 16) and measures TTFT and ITL under
that load.
Tokens/s and CPU are read over a window after a 2 s warm-up, from the gateway's counters.
`--processes 1,2` measures `serve --processes N` too (CPU and RSS: all N processes).
TTFT "added" compares with the mock engine's own TTFT, measured in-process without HTTP.
Prints a Markdown table and writes benchmarks/results/gateway_throughput.json.
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

from benchmarks.loadgen import (
    BODY,
    GatewayProcess,
    MetricsReader,
    cpu_seconds,
    environment,
    http_request,
    median,
    ms,
    percentile,
    probe,
    raise_fd_limit,
    rss_kib,
    run_wrk,
    save,
    wrk_available,
)
from trio_gateway.engines.mock import MockEngine
from trio_gateway.generation import Chunk, GenerationRequest, MockOptions

PROBES = 16
WARMUP_S = 2.0  # load runs this long before the measured window opens
TOKENS_METRIC = "trio_gateway_output_tokens_total"
REQUESTS_METRIC = "trio_gateway_requests_total"


async def engine_ttft(samples: int = 50) -> float:
    """The mock engine's own time to first token, no HTTP: the floor for the gateway's."""
    engine = MockEngine(("mock",), ttft_ms=5, itl_ms=10)
    values = []
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        for index in range(samples):
            send, receive = trio.open_memory_channel[Chunk](128)
            request = GenerationRequest(
                str(index), "chat", "mock", "hi", True, mock=MockOptions(tokens=1)
            )
            start = time.perf_counter()
            async with trio.open_nursery() as inner:
                inner.start_soon(engine.generate, request, send)
                await receive.receive()
                values.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    result = median(values)
    assert result is not None
    return result


async def point(gateway: GatewayProcess, c: int, seconds: float) -> dict[str, Any]:
    """Rates come from the gateway's own counters over a window that starts after a warm-up:
    tokens are counted as written, so streams still running at either edge count for what
    they sent inside it. (wrk's completed requests/s is quantised: at c=256 each connection
    finishes a whole number of ~1.2 s requests in the run, which hides changes of 10 %.)
    """
    probes = min(c, PROBES)
    wrk_connections = c - probes if wrk_available() else 0
    wrk_result: dict[str, Any] = {"requests_per_s": 0.0, "errors": []}
    window: dict[str, float] = {}
    peak_rss = rss_kib(gateway.pid)

    async def with_wrk() -> None:
        nonlocal wrk_result
        if wrk_connections:
            wrk_result = await trio.to_thread.run_sync(
                run_wrk, gateway.port, wrk_connections, WARMUP_S + seconds + 1, BODY
            )

    async def sample() -> dict[str, float]:
        return {
            "t": time.perf_counter(),
            "cpu": cpu_seconds(gateway.pid),
            "tokens": await metrics.total(TOKENS_METRIC),
            "requests": await metrics.total(REQUESTS_METRIC),
        }

    async def watch_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, rss_kib(gateway.pid))
            await trio.sleep(0.5)

    metrics = await MetricsReader.connect(gateway.port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_rss)
        async with trio.open_nursery() as load:
            load.start_soon(with_wrk)
            load.start_soon(metrics.window, sample, WARMUP_S, seconds, window)
            stats = await probe(gateway.port, probes, WARMUP_S + seconds, BODY)
        nursery.cancel_scope.cancel()
    await metrics.aclose()
    return {
        "concurrency": c,
        "wrk_connections": wrk_connections,
        "probe_connections": probes,
        "tokens_per_s": round(window["tokens"] / window["t"]),
        "requests_per_s": round(window["requests"] / window["t"], 1),
        "wrk_completed_requests_per_s": wrk_result["requests_per_s"],
        "ttft_p50_s": percentile(stats.ttft, 50),
        "ttft_p99_s": percentile(stats.ttft, 99),
        "itl_p50_s": percentile(stats.itl, 50),
        "itl_p99_s": percentile(stats.itl, 99),
        "gateway_cpu_percent": round(window["cpu"] / window["t"] * 100),
        "gateway_peak_rss_kib": peak_rss,
        "probe_requests": stats.requests,
        "tokens_per_read": round(stats.tokens / stats.token_reads, 2)
        if stats.token_reads
        else None,
        "errors": stats.errors,
        "wrk_errors": wrk_result["errors"],
    }


async def throughput(
    flags: tuple[str, ...], concurrencies: list[int], seconds: float
) -> list[dict[str, Any]]:
    """One fresh gateway (started with `flags`), warmed up, measured at each concurrency."""
    gateway = GatewayProcess(*flags)
    try:
        await probe(gateway.port, 32, 2, BODY)  # warm up
        points = []
        for c in concurrencies:
            print(f"  c={c}: {seconds:g} s ...", file=sys.stderr, flush=True)
            points.append(await point(gateway, c, seconds))
        return points
    finally:
        gateway.stop()


async def rss_per_stream(gateway: GatewayProcess, streams: int) -> dict[str, Any]:
    """RSS growth per open SSE stream: headers and one token sent, then the engine idles."""
    body = dict(BODY, mock={"tokens": 2, "itl_ms": 600_000, "ttft_ms": 0})
    request = http_request(gateway.port, body)
    await trio.sleep(0.5)
    before = rss_kib(gateway.pid)
    opened = trio.Semaphore(0)
    async with trio.open_nursery() as nursery:

        async def hold() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
            async with stream:
                await stream.send_all(request)
                received = b""
                while b'"content":"' not in received.split(b'"role"', 1)[-1]:
                    received += await stream.receive_some(65536)
                opened.release()
                await trio.sleep_forever()

        with trio.fail_after(60):
            for _ in range(streams):
                nursery.start_soon(hold)
            for _ in range(streams):
                await opened.acquire()
        await trio.sleep(1)
        during = rss_kib(gateway.pid)
        nursery.cancel_scope.cancel()
    return {
        "streams": streams,
        "rss_before_kib": before,
        "rss_open_kib": during,
        "kib_per_stream": round((during - before) / streams, 2),
    }


async def main(
    seconds: float, concurrencies: list[int], idle_streams: int, process_counts: list[int]
) -> None:
    raise_fd_limit()
    own_ttft = await engine_ttft()
    results: dict[str, Any] = {"environment": environment(), "engine_ttft_p50_s": own_ttft}
    flags = ("--mock-itl-ms", "10", "--mock-ttft-ms", "5", "--mock-max-num-seqs", "4096")
    # Memory on a fresh process: after load, freed arenas would hide the streams' cost.
    print(f"{idle_streams} idle streams ...", file=sys.stderr, flush=True)
    gateway = GatewayProcess(*flags)
    try:
        idle_rss = rss_kib(gateway.pid)
        await probe(gateway.port, 4, 1, BODY)  # warm up: first-request imports and caches
        memory = await rss_per_stream(gateway, idle_streams)
    finally:
        gateway.stop()
    by_processes: dict[int, list[dict[str, Any]]] = {}
    for processes in process_counts:
        print(f"{processes} gateway process(es):", file=sys.stderr, flush=True)
        extra = ("--processes", str(processes)) if processes > 1 else ()
        by_processes[processes] = await throughput((*flags, *extra), concurrencies, seconds)
    points = by_processes.get(1, [])
    results.update(
        idle_rss_kib=idle_rss,
        points=points,  # one process (the default); charts.py draws these
        points_by_processes={str(n): p for n, p in by_processes.items()},
        memory=memory,
    )
    path = save("gateway_throughput", results)

    print(f"\nmock engine's own TTFT p50: {ms(own_ttft)} ms; gateway idle RSS {idle_rss} KiB\n")
    print(
        "| procs | c | tok/s | req/s | TTFT p50 ms | TTFT p99 ms | TTFT added p50 ms "
        "| ITL p50 ms | ITL p99 ms | tok/read | CPU % | peak RSS MiB | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for processes, p in [(n, p) for n, ps in by_processes.items() for p in ps]:
        added = None if p["ttft_p50_s"] is None else p["ttft_p50_s"] - own_ttft
        errors = p["errors"] + len(p["wrk_errors"])
        print(
            f"| {processes} | {p['concurrency']} | {p['tokens_per_s']} | {p['requests_per_s']} "
            f"| {ms(p['ttft_p50_s'])} | {ms(p['ttft_p99_s'])} | {ms(added)} "
            f"| {ms(p['itl_p50_s'])} | {ms(p['itl_p99_s'])} | {p['tokens_per_read']} "
            f"| {p['gateway_cpu_percent']} "
            f"| {p['gateway_peak_rss_kib'] / 1024:.1f} | {errors} |"
        )
    print(
        f"\nRSS per open stream: {memory['kib_per_stream']} KiB "
        f"({memory['streams']} streams, {memory['rss_before_kib']} -> "
        f"{memory['rss_open_kib']} KiB)\nsaved {path}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--idle-streams", type=int, default=1000)
    parser.add_argument(
        "--processes", default="1", help="gateway process counts to measure, e.g. 1,2"
    )
    args = parser.parse_args()
    trio.run(
        partial(
            main,
            args.seconds,
            [int(c) for c in args.concurrency.split(",")],
            args.idle_streams,
            [int(n) for n in args.processes.split(",")],
        )
    )
