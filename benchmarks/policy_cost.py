"""What one routing decision costs, per policy: `cache_aware` hashes the prompt, matches it
against every backend's index and records it, so it must be measured on long prompts to
show it stays off the hot path.

    python benchmarks/policy_cost.py [--rounds 15] [--calls 200]

For 4 and 16 backends and prompts of 2k, 8k and 32k characters (7, 31 and 125 blocks of the
default 256 characters), µs per `choose` with a fresh `RouteKey` each call (as each request
has), so `cache_aware`'s figure is the whole hash + match + record:

- shared: one of 8 system prompts (the first 3/4 of the prompt) and one of 256 tails, the
  backends' loads balanced: the match and the affinity path;
- miss (cache_aware only): a prompt never seen (its first characters are new), so every
  block is inserted and as many old ones evicted; building the prompt is in the figure;
- hash: `block_hashes` alone, the part of cache_aware that grows with the prompt.

Every index starts full (the default 16,384 blocks per backend, of prefixes no measured
prompt shares), so evictions are paid. Each figure is the best round (what the code costs)
and the median round (what this box gave), rounds of `--calls` calls, the cases taking
turns. Also the memory of a full index, from tracemalloc. Prints a Markdown table and
writes benchmarks/results/policy_cost.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import environment, save
from trio_gateway.engines.mock_answer import WORDS
from trio_gateway.router.policies import CacheAware, CacheAwareOptions, Policy, make_policy
from trio_gateway.router.prefix_index import block_hashes
from trio_gateway.router.route_key import RouteKey

SIZES = (2_000, 8_000, 32_000)
BACKENDS = (4, 16)
POLICIES = ("round_robin", "least_inflight", "power_of_two", "cache_aware")
SYSTEM_PROMPTS = 8
TAILS = 256
MODEL = "mock"


@dataclass
class Candidate:
    name: str
    inflight: int
    weight: int = 1


def text(size: int, seed: int) -> str:
    """`size` characters of words, different for each seed from the first character on."""
    words = [f"{seed}:"]
    length = len(words[0])
    index = seed
    while length < size:
        word = WORDS[index % len(WORDS)]
        words.append(word)
        length += len(word) + 1
        index += 7
    return " ".join(words)[:size]


def fill(policy: CacheAware, candidates: list[Candidate]) -> None:
    """Every backend's index full of prefixes that no measured prompt shares."""
    options = policy.options
    seed = 10**6
    now = time.monotonic()  # the policy's clock: these must not expire while measured
    for candidate in candidates:
        while policy.index.size(candidate.name) < options.capacity_blocks:
            hashes = block_hashes(text(32_000, seed), options.block_chars, seed=MODEL)
            policy.index.record(candidate.name, hashes, now)
            seed += 1


def timed(call: Callable[[int], object], first: int, calls: int) -> float:
    """µs per call over `calls` calls numbered from `first`."""
    started = time.perf_counter()
    for number in range(first, first + calls):
        call(number)
    return (time.perf_counter() - started) / calls * 1e6


def measure(name: str, backends: int, size: int, rounds: int, calls: int) -> dict[str, Any]:
    rng = random.Random(size * backends)
    candidates = [Candidate(f"w{i}", rng.randint(0, 8)) for i in range(backends)]
    policy: Policy = make_policy(name)
    if isinstance(policy, CacheAware):
        fill(policy, candidates)
    head = size * 3 // 4
    systems = [text(head, 1 + n) for n in range(SYSTEM_PROMPTS)]
    tails = [text(size - head, 100 + n) for n in range(TAILS)]
    shared = [systems[n % SYSTEM_PROMPTS] + tails[n % TAILS] for n in range(SYSTEM_PROMPTS * 32)]
    miss_base = text(size, 0)
    cases: dict[str, Callable[[int], object]] = {
        "shared": lambda n: policy.choose(candidates, RouteKey(shared[n % len(shared)], MODEL)),
    }
    if isinstance(policy, CacheAware):
        cases["miss"] = lambda n: policy.choose(
            candidates, RouteKey(f"{n}:" + miss_base[len(str(n)) + 1 :], MODEL)
        )
        block_chars = policy.options.block_chars
        cases["hash"] = lambda n: block_hashes(shared[n % len(shared)], block_chars, seed=MODEL)
    for call in cases.values():  # warm: every shared prompt has been routed once
        for number in range(len(shared)):
            call(number)
    figures: dict[str, list[float]] = {case: [] for case in cases}
    first = 10**7  # miss prompts numbered past the warm-up's
    for number in range(rounds):
        for case, call in cases.items():
            figures[case].append(timed(call, first + number * calls, calls))
    point: dict[str, Any] = {"policy": name, "backends": backends, "characters": size}
    for case, values in figures.items():
        point[case] = {
            "best_us": round(min(values), 1),
            "median_us": round(statistics.median(values), 1),
        }
    if isinstance(policy, CacheAware):
        held = [policy.index.size(c.name) for c in candidates]
        assert max(held) <= policy.options.capacity_blocks  # bounded while measured
    return point


def memory(backends: int) -> dict[str, float]:
    """A full index of `backends` backends at the default capacity."""
    options = CacheAwareOptions()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    policy = CacheAware(options)
    fill(policy, [Candidate(f"w{i}", 0) for i in range(backends)])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    blocks = backends * options.capacity_blocks
    return {
        "backends": backends,
        "blocks": blocks,
        "mib": round((after - before) / 2**20, 1),
        "bytes_per_block": round((after - before) / blocks),
    }


def cell(point: dict[str, Any], case: str) -> str:
    if case not in point:
        return "-"
    return f"{point[case]['best_us']} / {point[case]['median_us']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    points = [
        measure(name, backends, size, args.rounds, args.calls)
        for name in POLICIES
        for backends in BACKENDS
        for size in SIZES
    ]
    held = [memory(backends) for backends in BACKENDS]
    print("µs per choose, best / median round (cache_aware: hash + match + record)\n")
    print("| policy | backends | prompt | shared | miss | of which hashing |")
    print("|---|---|---|---|---|---|")
    for p in points:
        cells = " | ".join(cell(p, case) for case in ("shared", "miss", "hash"))
        print(f"| {p['policy']} | {p['backends']} | {p['characters']:,} chars | {cells} |")
    for h in held:
        print(
            f"\nfull index, {h['backends']} backends: {h['blocks']:,} blocks, {h['mib']} MiB "
            f"({h['bytes_per_block']} bytes a block)"
        )
    defaults = CacheAwareOptions()
    path = save(
        "policy_cost",
        {
            "environment": environment(),
            "block_chars": defaults.block_chars,
            "capacity_blocks": defaults.capacity_blocks,
            "rounds": args.rounds,
            "calls": args.calls,
            "points": points,
            "memory": held,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
