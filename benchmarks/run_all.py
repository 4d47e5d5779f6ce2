"""Every benchmark in one command, bounded (about 7 minutes on a 2-core box):

    python benchmarks/run_all.py [--quick]

Runs the mock engine alone (the ceiling: no HTTP), then http_floor.py (a bare app on the
same hypercorn: the floor), gateway_throughput.py (one and two gateway processes),
shutdown_drain.py, worker_path.py, proxy_path.py (direct, smg when installed, and the
gateway in front of one upstream; about 2 minutes), prefix_cache.py and policy_cost.py
(about 1 minute), one after the other (they share the two cores, so never together), shows
each one's progress as it runs, prints their Markdown tables and writes
benchmarks/results/*.json (then charts, when matplotlib is installed).
`--quick` shortens every point for a smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.loadgen import environment, save  # noqa: E402
from trio_gateway.engines.mock import MockEngine  # noqa: E402
from trio_gateway.generation import Chunk, GenerationRequest, MockOptions  # noqa: E402


async def engine_alone(concurrency: int, seconds: float) -> dict[str, float]:
    """Closed-loop streams straight into the mock engine: what the gateway's path is
    measured against (100 tokens at 10 ms/token, 5 ms prefill)."""
    engine = MockEngine(("mock",), ttft_ms=5, itl_ms=10, max_num_seqs=4096)
    tokens = 0
    deadline = trio.current_time() + seconds

    async def stream(index: int) -> None:
        nonlocal tokens
        while trio.current_time() < deadline:
            send, receive = trio.open_memory_channel[Chunk](128)
            request = GenerationRequest(
                str(index), "chat", "mock", "hi", True, mock=MockOptions(tokens=100)
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.generate, request, send)
                while True:
                    chunk = await receive.receive()
                    if trio.current_time() <= deadline:  # only what the window saw
                        tokens += chunk.tokens
                    if chunk.finish_reason is not None:
                        break

    started, wall = time.process_time(), trio.current_time()
    async with trio.open_nursery() as outer:
        await outer.start(engine.run)
        async with trio.open_nursery() as streams:
            for index in range(concurrency):
                streams.start_soon(stream, index)
        outer.cancel_scope.cancel()
    return {
        "concurrency": concurrency,
        "tokens_per_s": round(tokens / seconds),
        "cpu_percent": round((time.process_time() - started) / (trio.current_time() - wall) * 100),
    }


def run(script: str, *args: str) -> None:
    print(f"\n## {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = "3" if args.quick else "10"
    started = time.monotonic()

    print("## mock engine alone (no HTTP)", flush=True)
    ceiling = [
        trio.run(partial(engine_alone, c, 3.0 if args.quick else 6.0)) for c in (1, 32, 256, 1000)
    ]
    print("\n| c | tok/s | ideal | CPU % |\n|---|---|---|---|")
    for point in ceiling:
        ideal = point["concurrency"] * 100
        print(
            f"| {point['concurrency']} | {point['tokens_per_s']} | {ideal} "
            f"| {point['cpu_percent']} |"
        )
    save("engine_alone", {"environment": environment(), "points": ceiling})

    run("http_floor.py", *(["--rounds", "2", "--idle-streams", "300"] if args.quick else []))
    run(
        "gateway_throughput.py",
        *("--seconds", seconds, "--concurrency", "1,32,64,256,1000", "--processes", "1,2"),
    )
    run("shutdown_drain.py", *(["--streams", "1,100"] if args.quick else []))
    run(
        "worker_path.py",
        "--concurrency",
        "1,32,256,1000",
        "--seconds",
        "3" if args.quick else "8",
        "--disconnects",
        "50" if args.quick else "200",
    )
    run(
        "proxy_path.py",
        *("--seconds", "2" if args.quick else "4", "--warmup", "1" if args.quick else "2"),
        *("--latency-seconds", "1" if args.quick else "3", "--rounds", "2" if args.quick else "3"),
    )
    run("prefix_cache.py", *(["--rounds", "5"] if args.quick else []))
    run("policy_cost.py", *(["--rounds", "3", "--calls", "50"] if args.quick else []))
    if importlib.util.find_spec("matplotlib") is not None:
        run("charts.py")
    print(f"\nall benchmarks in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
