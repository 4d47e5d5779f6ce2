"""The OpenAI-compatible proxy path: one upstream, direct and through each proxy, one run.

    python benchmarks/proxy_path.py [--seconds 10] [--concurrency 1,64,256]
        [--latency-seconds 6] [--warmup 2] [--smg /tmp/smg-venv/bin/smg]

One upstream: `trio-gateway serve` with its mock (5 ms prefill, 100 tokens at 10 ms, 4096
seqs), streaming chat. In front of it, all started at once and measured in turn at each
concurrency (so the box's drift hits them alike):
- direct: the clients call the upstream itself;
- smg: SGLang's Rust gateway (`smg launch --backend openai --policy round_robin`), skipped
  with a message if `--smg` is not an executable (install: `python3.11 -m venv
  /tmp/smg-venv && /tmp/smg-venv/bin/pip install smg==1.13.0`);
- trio-gateway `--worker http://upstream/v1`, one process, then `--processes 2`.
The load is benchmarks/gateway_throughput.py's: `wrk -t1` holds c - p connections, the
raw-socket probe p = min(c, 16) and measures TTFT. Tokens/s are read at the UPSTREAM's own
`trio_gateway_output_tokens_total` over a window after a warm-up, so every proxy is
counted the same way; CPU is the proxy's process tree over the same window.

Then the first-event latency a proxy adds, at c=1: a second upstream whose first token is
not on a step grid (`--mock-ttft-ms 0`, one token: `max_tokens: 1`, as a proxy may drop
the `mock` field), time from sending the request to the first token event, direct and
through each proxy, in alternating rounds.
Prints Markdown tables and writes benchmarks/results/proxy_path.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_gateway
from benchmarks.gateway_throughput import PROBES, REQUESTS_METRIC, TOKENS_METRIC
from benchmarks.loadgen import (
    BODY,
    GatewayProcess,
    LoopbackProcess,
    MetricsReader,
    StreamStats,
    cpu_seconds,
    environment,
    free_port,
    http_request,
    ms,
    percentile,
    probe,
    raise_fd_limit,
    run_stream,
    run_wrk,
    save,
    wrk_available,
)

MOCK = ("--mock-itl-ms", "10", "--mock-ttft-ms", "5", "--mock-max-num-seqs", "4096")
INSTANT = ("--mock-itl-ms", "10", "--mock-ttft-ms", "0", "--mock-tokens", "1")
ONE_TOKEN = dict(BODY, max_tokens=1, mock={"tokens": 1, "ttft_ms": 0})
DEFAULT_SMG = "/tmp/smg-venv/bin/smg"
PER_CONNECTION = 500  # hypercorn closes a keep-alive connection after 1000 requests


@dataclass
class Target:
    """Where the clients send requests; `proc` is the proxy (None: the upstream itself)."""

    name: str
    port: int
    proc: LoopbackProcess | None = None

    def cpu(self) -> float:
        return 0.0 if self.proc is None else cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def http_ok(port: int, paths: tuple[str, ...]) -> bool:
    for path in paths:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            continue
    return False


def start_smg(binary: str, upstream: int) -> LoopbackProcess:
    """`smg launch` in front of one OpenAI-compatible worker; ready once /readiness says 200
    (its /v1/models answers 503 "no models" in this mode). Logs at warn, as the gateway
    runs at warning: at info smg logs two lines a request."""
    proc = LoopbackProcess(
        lambda port: [
            *(binary, "launch", "--host", "127.0.0.1", "--port", str(port)),
            *("--worker-urls", f"http://127.0.0.1:{upstream}"),
            *("--policy", "round_robin", "--backend", "openai", "--log-level", "warn"),
            *("--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())),
        ],
        name="smg",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.proc.poll() is None:
        if http_ok(proc.port, ("/readiness", "/health")):
            return proc
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"smg did not become ready; see {proc.log.name}")


def smg_version(binary: str) -> str | None:
    python = Path(binary).parent / "python"
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('smg'))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def start_proxies(upstream: int, smg: str | None) -> list[Target]:
    targets = [Target("direct", upstream)]
    try:
        if smg is not None:
            proc = start_smg(smg, upstream)
            targets.append(Target("smg", proc.port, proc))
        # The upstream runs 4096 sequences at once (MOCK): the gateway admits as many.
        worker = ("--worker", f"http://127.0.0.1:{upstream}/v1", "--upstream-max-inflight", "4096")
        for name, extra in (("trio-gateway", ()), ("trio-gateway x2", ("--processes", "2"))):
            gateway = GatewayProcess(*worker, *extra)
            targets.append(Target(name, gateway.port, gateway))
    except BaseException:
        for target in targets:
            target.stop()
        raise
    return targets


async def point(
    target: Target, upstream: GatewayProcess, c: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """gateway_throughput.point's load and window, with the tokens counted at the upstream
    and the CPU of the proxy (and of the upstream) in that window."""
    probes = min(c, PROBES)
    wrk_connections = c - probes if wrk_available() else 0
    wrk_result: dict[str, Any] = {"requests_per_s": 0.0, "errors": []}
    window: dict[str, float] = {}

    async def with_wrk() -> None:
        nonlocal wrk_result
        if wrk_connections:
            wrk_result = await trio.to_thread.run_sync(
                run_wrk, target.port, wrk_connections, warmup + seconds + 1, BODY
            )

    async def sample() -> dict[str, float]:
        return {
            "t": time.perf_counter(),
            "proxy_cpu": target.cpu(),
            "upstream_cpu": cpu_seconds(upstream.pid),
            "tokens": await metrics.total(TOKENS_METRIC),
            "requests": await metrics.total(REQUESTS_METRIC),
        }

    metrics = await MetricsReader.connect(upstream.port)
    async with trio.open_nursery() as load:
        load.start_soon(with_wrk)
        load.start_soon(metrics.window, sample, warmup, seconds, window)
        stats = await probe(target.port, probes, warmup + seconds, BODY)
    await metrics.aclose()
    tokens = window["tokens"]
    return {
        "concurrency": c,
        "wrk_connections": wrk_connections,
        "probe_connections": probes,
        "tokens_per_s": round(tokens / window["t"]),
        "requests_per_s": round(window["requests"] / window["t"], 1),
        "ttft_p50_s": percentile(stats.ttft, 50),
        "ttft_p99_s": percentile(stats.ttft, 99),
        "itl_p50_s": percentile(stats.itl, 50),
        "proxy_cpu_percent": None
        if target.proc is None
        else round(window["proxy_cpu"] / window["t"] * 100),
        "proxy_cpu_s_per_1k_tokens": None
        if target.proc is None or not tokens
        else window["proxy_cpu"] / tokens * 1000,
        "upstream_cpu_percent": round(window["upstream_cpu"] / window["t"] * 100),
        "probe_requests": stats.requests,
        "errors": stats.errors,
        "wrk_errors": wrk_result["errors"],
    }


async def throughput(
    smg: str | None, concurrencies: list[int], seconds: float, warmup: float
) -> dict[str, list[dict[str, Any]]]:
    upstream = GatewayProcess(*MOCK)
    try:
        targets = start_proxies(upstream.port, smg)
        try:
            for target in targets:
                await probe(target.port, 32, 2, BODY)  # warm up
            results: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
            for c in concurrencies:
                for target in targets:
                    print(f"  c={c} {target.name}: {seconds:g} s ...", file=sys.stderr, flush=True)
                    results[target.name].append(await point(target, upstream, c, seconds, warmup))
            return results
        finally:
            for target in targets:
                target.stop()
    finally:
        upstream.stop()


async def one_by_one(port: int, seconds: float, body: dict[str, Any]) -> StreamStats:
    """Sequential requests on one keep-alive connection, a fresh one every PER_CONNECTION
    requests: at ~1 ms a request, probe() would meet hypercorn's keep_alive_max_requests
    (1000) on the direct path, and count the close as an error."""
    stats = StreamStats()
    request = http_request(port, body)
    deadline = time.perf_counter() + seconds
    with trio.fail_after(seconds + 60):
        while time.perf_counter() < deadline:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for _ in range(PER_CONNECTION):
                    if time.perf_counter() >= deadline:
                        break
                    if not await run_stream(stream, request, stats):
                        break
    return stats


async def first_event(smg: str | None, seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Sequential one-token requests at c=1, each target in turn, `rounds` times."""
    upstream = GatewayProcess(*INSTANT)
    try:
        targets = start_proxies(upstream.port, smg)
        try:
            pooled = {target.name: StreamStats() for target in targets}
            for target in targets:
                await one_by_one(target.port, 0.5, ONE_TOKEN)  # warm up
            for _ in range(rounds):
                for target in targets:
                    stats = await one_by_one(target.port, seconds / rounds, ONE_TOKEN)
                    pool = pooled[target.name]
                    pool.ttft += stats.ttft
                    pool.requests += stats.requests
                    pool.errors += stats.errors
        finally:
            for target in targets:
                target.stop()
    finally:
        upstream.stop()
    base50, base99 = (percentile(pooled["direct"].ttft, q) for q in (50, 99))
    results = {}
    for name, stats in pooled.items():
        p50, p99 = percentile(stats.ttft, 50), percentile(stats.ttft, 99)
        results[name] = {
            "requests": stats.requests,
            "errors": stats.errors,
            "p50_s": p50,
            "p99_s": p99,
            "added_p50_s": None if p50 is None or base50 is None else p50 - base50,
            "added_p99_s": None if p99 is None or base99 is None else p99 - base99,
        }
    return results


def find_smg(path: str | None) -> str | None:
    candidate = path or (DEFAULT_SMG if os.path.exists(DEFAULT_SMG) else shutil.which("smg"))
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    print(
        f"smg not found ({path or DEFAULT_SMG}): skipping it. Install: python3.11 -m venv "
        "/tmp/smg-venv && /tmp/smg-venv/bin/pip install smg==1.13.0",
        file=sys.stderr,
    )
    return None


def commit() -> str | None:
    """HEAD of the trio_gateway that runs, "+dirty" if its working tree differs."""
    package = Path(trio_gateway.__file__).parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if git("status", "--porcelain", "--", ".") else "")


async def main(
    smg: str | None,
    concurrencies: list[int],
    seconds: float,
    warmup: float,
    latency_seconds: float,
    rounds: int,
) -> None:
    raise_fd_limit()
    started = time.monotonic()
    results: dict[str, Any] = {
        "environment": environment(),
        "commit": commit(),
        "smg": None if smg is None else {"path": smg, "version": smg_version(smg)},
        "upstream_flags": list(MOCK),
        "seconds": seconds,
        "warmup_s": warmup,
    }
    print(f"commit {results['commit']}; throughput, one upstream", file=sys.stderr, flush=True)
    points = await throughput(smg, concurrencies, seconds, warmup)
    print("first-event latency at c=1", file=sys.stderr, flush=True)
    latency = await first_event(smg, latency_seconds, rounds)
    results.update(throughput=points, first_event=latency)
    results["run_s"] = round(time.monotonic() - started)
    path = save("proxy_path", results)

    version = "" if smg is None else f", smg {results['smg']['version']}"
    print(f"\ncommit {results['commit']}{version}; tokens counted at the upstream\n")
    print(
        "| path | c | tok/s | ratio to direct | TTFT p50 ms | TTFT p99 ms | proxy CPU % "
        "| proxy CPU s / 1k tok | ratio to smg | upstream CPU % | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for index, c in enumerate(concurrencies):
        direct = points["direct"][index]
        smg_point = points["smg"][index] if "smg" in points else None
        for name, by_c in points.items():
            p = by_c[index]
            ratio = p["tokens_per_s"] / max(1, direct["tokens_per_s"])
            per_1k = p["proxy_cpu_s_per_1k_tokens"]
            smg_1k = None if smg_point is None else smg_point["proxy_cpu_s_per_1k_tokens"]
            to_smg = "-" if per_1k is None or not smg_1k else f"{per_1k / smg_1k:.2f}"
            cpu = "-" if p["proxy_cpu_percent"] is None else p["proxy_cpu_percent"]
            print(
                f"| {name} | {c} | {p['tokens_per_s']} | {ratio:.2f} "
                f"| {ms(p['ttft_p50_s'])} | {ms(p['ttft_p99_s'])} | {cpu} "
                f"| {'-' if per_1k is None else f'{per_1k:.4f}'} | {to_smg} "
                f"| {p['upstream_cpu_percent']} | {p['errors'] + len(p['wrk_errors'])} |"
            )
    print(
        "\n| first event, c=1, upstream ttft 0 | requests | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in latency.items():
        print(
            f"| {name} | {row['requests']} | {ms(row['p50_s'])} | {ms(row['p99_s'])} "
            f"| {ms(row['added_p50_s'])} | {ms(row['added_p99_s'])} | {row['errors']} |"
        )
    print(f"\n{results['run_s']} s; saved {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="measured window per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the window")
    parser.add_argument("--concurrency", default="1,64,256")
    parser.add_argument("--latency-seconds", type=float, default=6, help="per target, c=1")
    parser.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    parser.add_argument("--smg", default=None, help=f"smg binary (default {DEFAULT_SMG})")
    args = parser.parse_args()
    trio.run(
        partial(
            main,
            find_smg(args.smg),
            [int(c) for c in args.concurrency.split(",")],
            args.seconds,
            args.warmup,
            args.latency_seconds,
            args.rounds,
        )
    )
