"""Shutdown drain time: N open streams, SIGTERM, and how each stream and the process end.

    python benchmarks/shutdown_drain.py [--streams 1,100,1000] [--length 3] [--deadline 1]

For each N: `trio-gateway serve` as a subprocess, N streams of `--length` seconds (tokens at
100 ms), SIGTERM once all have their first token. Measured: SIGTERM → `/ready` answering
503; each stream intact (`[DONE]`, no error), cut with a frame (error frame + `[DONE]`) or
cut bare (closed without `[DONE]`: must be 0); last `[DONE]` → process exit. Then the same
with a drain deadline (`--deadline`) far shorter than the streams (`--cut-length`, a token a
second): how far past the deadline the last cut stream gets its frame, as this (Python)
client sees it.
Prints a Markdown table and writes benchmarks/results/shutdown_drain.json.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import (
    GatewayProcess,
    environment,
    http_request,
    raise_fd_limit,
    save,
)

ITL_MS = 100


async def ready_status(port: int) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head = await stream.receive_some()
    return int(head.split(b" ", 2)[1])


async def run_case(
    streams: int, length: float, drain_timeout: float, itl_ms: float = ITL_MS
) -> dict[str, Any]:
    gateway = GatewayProcess("--drain-timeout-s", str(drain_timeout), "--mock-max-num-seqs", "4096")
    body = {
        "model": "mock",
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
        "mock": {"tokens": round(length * 1000 / itl_ms), "itl_ms": itl_ms, "ttft_ms": 0},
    }
    request = http_request(gateway.port, body)
    outcomes: list[tuple[str, float]] = []
    failures: list[str] = []
    first_tokens = trio.Semaphore(0)

    async def one_stream() -> None:
        received = b""
        announced = False
        error = ""
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
            async with stream:
                await stream.send_all(request)
                while not received.endswith(b"0\r\n\r\n"):
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    received += data
                    if not announced and received.count(b'"content":') >= 2:
                        announced = True
                        first_tokens.release()
        except OSError as failure:
            error = repr(failure)
        finally:
            if not announced:
                first_tokens.release()  # never leave the SIGTERM waiting on a dead stream
        done = b"data: [DONE]" in received
        if not announced:
            kind = "failed_to_open"
            failures.append(error or received[:200].decode(errors="replace"))
        elif not done:
            kind = "bare"
        else:
            kind = "frame" if b'"error"' in received else "intact"
        outcomes.append((kind, time.perf_counter()))

    try:
        with trio.fail_after(length + drain_timeout + 60):
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(one_stream)
                for _ in range(streams):
                    await first_tokens.acquire()
                sigterm_at = time.perf_counter()
                gateway.proc.send_signal(signal.SIGTERM)
                status = 200
                while status == 200:
                    status = await ready_status(gateway.port)
                not_ready_after = time.perf_counter() - sigterm_at
            last_end = max(at for _, at in outcomes)
            await trio.to_thread.run_sync(gateway.proc.wait)
            exited_at = time.perf_counter()
    finally:
        gateway.stop()
    kinds = [kind for kind, _ in outcomes]
    cut_times = [at - sigterm_at for kind, at in outcomes if kind == "frame"]
    return {
        "streams": streams,
        "length_s": length,
        "itl_ms": itl_ms,
        "drain_timeout_s": drain_timeout,
        "ready_503_after_s": not_ready_after,
        "intact": kinds.count("intact"),
        "cut_with_frame": kinds.count("frame"),
        "cut_bare": kinds.count("bare"),
        "failed_to_open": kinds.count("failed_to_open"),
        "open_failures": failures[:5],
        "exit_after_last_stream_s": exited_at - last_end,
        "exit_after_sigterm_s": exited_at - sigterm_at,
        "exit_code": gateway.proc.returncode,
        "cut_minus_deadline_max_s": (max(cut_times) - drain_timeout) if cut_times else None,
    }


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


async def main(counts: list[int], length: float, deadline: float, cut_length: float) -> None:
    raise_fd_limit()
    cases = []
    for n in counts:
        print(f"{n} streams, drain ≥ stream length ...", file=sys.stderr, flush=True)
        cases.append(await run_case(n, length, drain_timeout=length + 10))
        print(f"{n} streams, deadline {deadline:g} s ...", file=sys.stderr, flush=True)
        # Streams far longer than the deadline, so every one of them is cut.
        # A token a second: 1000 such streams are a load the gateway sustains, so the figure
        # is about the cut, not about an overloaded loop (100 ms tokens x 1000 streams is).
        cases.append(await run_case(n, cut_length, drain_timeout=deadline, itl_ms=1000))
    path = save("shutdown_drain", {"environment": environment(), "cases": cases})
    print(
        "\n| streams | drain deadline s | /ready 503 after ms | intact | cut w/ frame "
        "| cut bare | not opened | last stream → exit ms | cut - deadline ms | exit code |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        print(
            f"| {c['streams']} | {c['drain_timeout_s']:g} | {ms(c['ready_503_after_s'])} "
            f"| {c['intact']} | {c['cut_with_frame']} | {c['cut_bare']} | {c['failed_to_open']} "
            f"| {ms(c['exit_after_last_stream_s'])} | {ms(c['cut_minus_deadline_max_s'])} "
            f"| {c['exit_code']} |"
        )
    print(f"\nstreams of {length:g} s; saved {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,100,1000")
    parser.add_argument("--length", type=float, default=4.0)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--cut-length", type=float, default=60.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    trio.run(partial(main, counts, args.length, args.deadline, args.cut_length))
