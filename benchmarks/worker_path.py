"""The remote paths against the in-process one, and disconnect → cancel latency.

    python benchmarks/worker_path.py [--seconds 8] [--concurrency 1,32,256] [--disconnects 200]

1. Tokens/s and TTFT at each concurrency: gateway + in-process mock, then gateway + one
   `trio-gateway worker` over the WebSocket request plane (same mock settings), the same
   load as benchmarks/gateway_throughput.py (wrk for throughput, a raw-socket probe for
   latency).
2. OpenAI-compatible upstream overhead: another trio-gateway stands in as the upstream;
   clients call it directly, then through a gateway started with `--worker http://.../v1`.
3. Disconnect → cancel: N sequential streams, each closed by the client after its first
   token; the time from the close to the cancel, from the wall-clock stamps the gateway
   (in-process) and the worker (remote) log at debug level.
Prints Markdown tables and writes benchmarks/results/worker_path.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_throughput import point, throughput
from benchmarks.loadgen import (
    BODY,
    GatewayProcess,
    environment,
    http_request,
    ms,
    percentile,
    probe,
    raise_fd_limit,
    save,
)

MOCK = ("--mock-itl-ms", "10", "--mock-ttft-ms", "5", "--mock-max-num-seqs", "4096")
STAMP = re.compile(rb"cancelled (?:at|by the gateway at) (\d+\.\d+)")


class WorkerProcess(GatewayProcess):
    """`trio-gateway worker` on a free port (reuses the gateway launcher)."""

    def __init__(self, *flags: str) -> None:
        super().__init__(*flags, command="worker")


async def disconnects(port: int, log: Path, count: int) -> list[float]:
    """Close `count` streams one by one after their first token; latencies from the log."""
    body = dict(BODY, mock={"tokens": 100_000, "itl_ms": 10, "ttft_ms": 0})
    request = http_request(port, body)
    closed_at: list[float] = []
    for _ in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        received = b""
        with trio.fail_after(10):
            while received.count(b'"content":') < 2:
                received += await stream.receive_some(65536)
        closed_at.append(time.time())
        await stream.aclose()
        await trio.sleep(0.02)  # let the cancel land before the next stream starts
    await trio.sleep(0.5)
    stamps = [float(m) for m in STAMP.findall(await trio.Path(log).read_bytes())]
    if len(stamps) != count:
        raise RuntimeError(f"expected {count} cancel stamps in {log}, found {len(stamps)}")
    return [stamp - closed for stamp, closed in zip(stamps, closed_at, strict=True)]


async def main(seconds: float, concurrencies: list[int], count: int) -> None:
    raise_fd_limit()
    results: dict[str, Any] = {"environment": environment()}

    print("gateway + in-process mock", file=sys.stderr, flush=True)
    results["in_process"] = await throughput(MOCK, concurrencies, seconds)
    print("gateway + 1 worker", file=sys.stderr, flush=True)
    worker = WorkerProcess(*MOCK)
    try:
        results["worker"] = await throughput(
            ("--worker", f"ws://127.0.0.1:{worker.port}"), concurrencies, seconds
        )
    finally:
        worker.stop()

    print("OpenAI-compatible upstream: direct, then through the gateway", file=sys.stderr)
    upstream = GatewayProcess(*MOCK)
    try:
        direct = [await point(upstream, c, seconds) for c in concurrencies]
        # The upstream runs 4096 sequences at once (MOCK): the gateway admits as many.
        via = GatewayProcess(
            "--worker", f"http://127.0.0.1:{upstream.port}/v1", "--upstream-max-inflight", "4096"
        )
        try:
            await probe(via.port, 4, 1, BODY)
            through = [await point(via, c, seconds) for c in concurrencies]
        finally:
            via.stop()
    finally:
        upstream.stop()
    results["upstream"] = {"direct": direct, "through_gateway": through}

    print(f"{count} disconnects, in-process then through a worker", file=sys.stderr)
    local = GatewayProcess(*MOCK, "--log-level", "debug")
    try:
        in_process = await disconnects(local.port, Path(local.log.name), count)
    finally:
        local.stop()
    worker = WorkerProcess(*MOCK, "--log-level", "debug")
    try:
        gateway = GatewayProcess("--worker", f"ws://127.0.0.1:{worker.port}")
        try:
            await probe(gateway.port, 1, 0.5, BODY)
            remote = await disconnects(gateway.port, Path(worker.log.name), count)
        finally:
            gateway.stop()
    finally:
        worker.stop()
    results["disconnect_to_cancel_s"] = {"in_process": in_process, "worker": remote}
    path = save("worker_path", results)

    print(
        "\n| path | c | tok/s | ratio to in-process | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | gateway CPU % | gateway RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for local_point, remote_point in zip(results["in_process"], results["worker"], strict=True):
        for name, p in (("in-process", local_point), ("worker", remote_point)):
            ratio = p["tokens_per_s"] / max(1, local_point["tokens_per_s"])
            print(
                f"| {name} | {p['concurrency']} | {p['tokens_per_s']} | {ratio:.2f} "
                f"| {ms(p['ttft_p50_s'])} | {ms(p['ttft_p99_s'])} | {ms(p['itl_p50_s'])} "
                f"| {ms(p['itl_p99_s'])} | {p['gateway_cpu_percent']} "
                f"| {p['gateway_peak_rss_kib'] / 1024:.1f} |"
            )
    print(
        "\n| upstream | c | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| CPU % (that process) | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, points in (("direct", direct), ("through the gateway", through)):
        for p in points:
            print(
                f"| {name} | {p['concurrency']} | {p['tokens_per_s']} "
                f"| {ms(p['ttft_p50_s'])} | {ms(p['ttft_p99_s'])} | {ms(p['itl_p50_s'])} "
                f"| {ms(p['itl_p99_s'])} | {p['gateway_cpu_percent']} "
                f"| {p['errors'] + len(p['wrk_errors'])} |"
            )
    print("\n| disconnect → cancel | n | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, values in (("in-process", in_process), ("through a worker", remote)):
        print(
            f"| {name} | {len(values)} | {ms(percentile(values, 50))} "
            f"| {ms(percentile(values, 99))} | {ms(max(values))} |"
        )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--disconnects", type=int, default=200)
    args = parser.parse_args()
    trio.run(
        partial(main, args.seconds, [int(c) for c in args.concurrency.split(",")], args.disconnects)
    )
