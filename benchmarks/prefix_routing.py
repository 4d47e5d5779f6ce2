"""Routing policies against a fleet of mock workers that model a prefix cache.

    python -m benchmarks.prefix_routing [--requests 1000] [--concurrency 16]

Four `trio-gateway worker`s, each with a block prefix cache too small for the whole working
set (`--mock-prefix-cache-blocks`) and a prefill time proportional to the uncached part of
the prompt (`--mock-prefill-ms-per-1k-tokens`). Two workloads:

- shared prompts: 8 system prompts of 2-8k tokens, Zipf popularity, a short question each;
- multi-turn chats: conversations whose every turn resends the whole conversation so far.

For each policy (round_robin, power_of_two, cache_aware), with one gateway and with two
(clients alternate between them as an L4 balancer would; the two share a Redis, which is
how cache_aware replicas share what they routed): TTFT p50/p99 as the client sees it, the
cache hit rate (cached / prompt tokens, from `usage.prompt_tokens_details`), load imbalance
(max / mean over workers of the time-averaged in-flight count, sampled from each worker's
metrics) and gateway CPU per request. Workers restart for every run (cold caches).
Prints a Markdown table and writes benchmarks/results/prefix_routing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import (
    GatewayProcess,
    cpu_seconds,
    environment,
    free_port,
    ms,
    percentile,
    save,
)

WORKERS = 4
POLICIES = ("round_robin", "power_of_two", "cache_aware")
BLOCK_TOKENS = 16
CACHE_BLOCKS = 1024  # 16k tokens per worker: about a third of the shared prompts
# Prefill against decode as on a GPU: a decode step reads every weight once (memory bound),
# prefill does 2 FLOPs per weight per token (compute bound), so prefill ms per 1k tokens over
# the step time is about 1000 x memory bandwidth / usable FLOP/s, whatever the model's size:
# H100 SXM, 3.35 TB/s over ~600 of its 990 dense bf16 TFLOP/s: about 5.6 (A100: about 10).
# With a 10 ms step (the mock's ITL), 50 ms per 1k uncached tokens (attention's share, which
# grows with the prompt, left out).
PREFILL_MS_PER_1K = 50.0
MOCK = ("--mock-ttft-ms", "5", "--mock-itl-ms", "10", "--mock-max-num-seqs", "256")
MAX_TOKENS = 8
# Clients in flight: with 4 workers, 1-2 gateways and the Python client on 2 cores, 16 kept
# the cores busy with the harness itself, so TTFT measured CPU queueing more than prefill.
CONCURRENCY = 8
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def text_of(tokens: int, rng: random.Random) -> str:
    """About `tokens` mock tokens (4 characters each) of deterministic words."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def shared_prompt_workload(requests: int, seed: int = 7) -> list[list[list[dict[str, str]]]]:
    """One "conversation" of one turn per request: a Zipf-popular system prompt + a question."""
    rng = random.Random(seed)
    prompts = [text_of(rng.randint(2000, 8000), random.Random(100 + i)) for i in range(8)]
    weights = [1 / (rank + 1) for rank in range(len(prompts))]
    work = []
    for i in range(requests):
        system = rng.choices(prompts, weights)[0]
        question = f"question {i}: " + text_of(30, rng)
        work.append(
            [[{"role": "system", "content": system}, {"role": "user", "content": question}]]
        )
    return work


def multi_turn_workload(
    conversations: int, turns: int, seed: int = 11
) -> list[list[list[dict[str, str]]]]:
    """Each conversation's turns in order; every turn carries the conversation so far."""
    rng = random.Random(seed)
    work = []
    for c in range(conversations):
        messages = [{"role": "system", "content": f"conversation {c}. " + text_of(500, rng)}]
        turns_of_c = []
        for _ in range(turns):
            messages = [*messages, {"role": "user", "content": text_of(200, rng)}]
            turns_of_c.append(messages)
            messages = [*messages, {"role": "assistant", "content": text_of(150, rng)}]
        work.append(turns_of_c)
    return work


@dataclass
class RunStats:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    errors: int = 0
    requests: int = 0


async def one_request(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], stats: RunStats
) -> None:
    body = {
        "model": "mock",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": MAX_TOKENS,
        "messages": messages,
    }
    sent = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            stats.errors += 1
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if (
                first is None
                and event.get("choices")
                and event["choices"][0]["delta"].get("content")
            ):
                first = time.perf_counter()
            usage = event.get("usage")
            if usage:
                stats.prompt_tokens += usage["prompt_tokens"]
                details = usage.get("prompt_tokens_details") or {}
                stats.cached_tokens += details.get("cached_tokens") or 0
    stats.requests += 1
    if first is not None:
        stats.ttft.append(first - sent)


def load_averages() -> list[float]:
    """`uptime`'s 1, 5 and 15 minute load: the box is shared, so each run says how busy."""
    return [round(load, 2) for load in os.getloadavg()]


async def run_workload(
    gateway_ports: list[int],
    work: list[list[list[dict[str, str]]]],
    concurrency: int,
    metrics_ports: list[int],
) -> tuple[RunStats, float]:
    """Conversations run `concurrency` at a time, each one's turns in order; requests
    alternate between gateways. Returns the stats and the in-flight imbalance."""
    stats = RunStats()
    queue = list(reversed(work))
    turn = 0
    samples: list[list[float]] = [[] for _ in metrics_ports]
    done = trio.Event()
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def conversation_runner() -> None:
            nonlocal turn
            while queue:
                conversation = queue.pop()
                for messages in conversation:
                    port = gateway_ports[turn % len(gateway_ports)]
                    turn += 1
                    await one_request(
                        client, f"http://127.0.0.1:{port}/v1/chat/completions", messages, stats
                    )

        async def sampler() -> None:
            while not done.is_set():
                for i, port in enumerate(metrics_ports):
                    response = await client.get(f"http://127.0.0.1:{port}/metrics")
                    for line in response.text.splitlines():
                        if line.startswith("trio_gateway_worker_active_requests "):
                            samples[i].append(float(line.split()[1]))
                with trio.move_on_after(0.05):
                    await done.wait()

        with trio.fail_after(1800):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler)
                async with trio.open_nursery() as runners:
                    for _ in range(concurrency):
                        runners.start_soon(conversation_runner)
                done.set()
    means = [statistics.fmean(s) if s else 0.0 for s in samples]
    imbalance = max(means) / statistics.fmean(means) if statistics.fmean(means) > 0 else 1.0
    return stats, imbalance


def wait_for_workers(port: int, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        up = [line for line in text.splitlines() if line.startswith("trio_gateway_backend_up{")]
        if sum(line.endswith(" 1.0") for line in up) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"gateway on {port}: {count} workers did not connect in 30 s")


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is needed for two replicas (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return process, f"redis://127.0.0.1:{port}/0"


def measure(
    policy: str,
    replicas: int,
    work: list[Any],
    concurrency: int,
    prefill_ms_per_1k: float,
    gateway_flags: tuple[str, ...] = (),
) -> dict[str, Any]:
    metrics_ports = [free_port() for _ in range(WORKERS)]
    workers = [
        GatewayProcess(
            "--metrics-port",
            str(mp),
            *MOCK,
            "--mock-prefix-block-tokens",
            str(BLOCK_TOKENS),
            "--mock-prefix-cache-blocks",
            str(CACHE_BLOCKS),
            "--mock-prefill-ms-per-1k-tokens",
            str(prefill_ms_per_1k),
            command="worker",
        )
        for mp in metrics_ports
    ]
    redis, redis_url = start_redis() if replicas > 1 else (None, "")
    gateways: list[GatewayProcess] = []
    try:
        flags = [f for w in workers for f in ("--worker", f"ws://127.0.0.1:{w.port}")]
        flags += ["--routing-policy", policy, *gateway_flags]
        if redis_url:
            flags += ["--session-store", redis_url]
        gateways = [GatewayProcess(*flags) for _ in range(replicas)]
        for gateway in gateways:
            wait_for_workers(gateway.port, WORKERS)
        load_before = load_averages()
        cpu_before = sum(cpu_seconds(g.pid) for g in gateways)
        started = time.perf_counter()
        stats, imbalance = trio.run(
            run_workload, [g.port for g in gateways], work, concurrency, metrics_ports
        )
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(g.pid) for g in gateways) - cpu_before
    finally:
        for process in [*gateways, *workers]:
            process.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(5)
    return {
        "policy": policy,
        "replicas": replicas,
        "requests": stats.requests,
        "errors": stats.errors,
        "ttft_p50_s": percentile(stats.ttft, 50),
        "ttft_p99_s": percentile(stats.ttft, 99),
        "hit_rate": stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0,
        "imbalance": imbalance,
        "gateway_cpu_ms_per_request": 1000 * cpu / max(1, stats.requests),
        "seconds": elapsed,
        "load_before": load_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--prefill-ms-per-1k", type=float, default=PREFILL_MS_PER_1K)
    parser.add_argument("--workloads", default="shared,multi-turn")
    parser.add_argument(
        "--cache-aware-load-factor", help="passed to the gateways (default: theirs)"
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--replicas", default="1,2")
    args = parser.parse_args()
    chosen = args.workloads.split(",")
    workloads = {}
    if "shared" in chosen:
        workloads["shared prompts"] = shared_prompt_workload(args.requests)
    if "multi-turn" in chosen:
        workloads["multi-turn"] = multi_turn_workload(args.conversations, args.turns)
    gateway_flags: tuple[str, ...] = ()
    if args.cache_aware_load_factor is not None:
        gateway_flags = ("--cache-aware-load-factor", args.cache_aware_load_factor)
    print("load averages at the start:", load_averages(), flush=True)
    rows = []
    for name, work in workloads.items():
        for replicas in [int(r) for r in args.replicas.split(",")]:
            for policy in args.policies.split(","):
                row = {
                    "workload": name,
                    **measure(
                        policy,
                        replicas,
                        work,
                        args.concurrency,
                        args.prefill_ms_per_1k,
                        gateway_flags,
                    ),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| workload | replicas | policy | TTFT p50 / p99 ms | hit rate | imbalance "
        "| gateway CPU / request | errors | load before |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['replicas']} | {r['policy']} | {ms(r['ttft_p50_s'])} / "
            f"{ms(r['ttft_p99_s'])} | {r['hit_rate']:.2f} | {r['imbalance']:.2f} | "
            f"{r['gateway_cpu_ms_per_request']:.2f} ms | {r['errors']} | "
            f"{r['load_before'][0]:.1f} |"
        )
    settings = {
        "workers": WORKERS,
        "block_tokens": BLOCK_TOKENS,
        "cache_blocks_per_worker": CACHE_BLOCKS,
        "prefill_ms_per_1k_tokens": args.prefill_ms_per_1k,
        "max_tokens": MAX_TOKENS,
        "concurrency": args.concurrency,
        "gateway_flags": list(gateway_flags),
    }
    print(
        "\nsaved",
        save("prefix_routing", {"settings": settings, "rows": rows, "environment": environment()}),
    )


if __name__ == "__main__":
    main()
