"""The mock's prefix cache alone: what one request's lookup + insert (`PrefixCache.admit`)
costs, so it stays off the hot path with 32k-character prompts.

    python benchmarks/prefix_cache.py [--rounds 15] [--calls 200]

For prompts of 2k, 8k and 32k characters (500 to 8000 tokens, 31 to 500 blocks of 16
tokens), into a cache of the default 8192 blocks kept full:

- hit: the same prompt again (every block found, then touched);
- shared: a shared first 3/4 and a new last 1/4 each time (the system-prompt workload);
- miss: a new prompt each time (nothing found, every block inserted, as many evicted).

Each figure is µs per call: the best round (what the code costs) and the median round (what
this box gave); rounds of `--calls` calls, the three cases taking turns. Also the cache's
memory when full, from tracemalloc. Prints a Markdown table and writes
benchmarks/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import environment, save
from trio_gateway.engines.mock_answer import WORDS
from trio_gateway.engines.prefix_cache import PrefixCache

SIZES = (2_000, 8_000, 32_000)
CAPACITY = 8192  # the default `--mock-prefix-cache-blocks`


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


def full_cache() -> PrefixCache:
    """The default cache, filled with blocks no measured prompt shares."""
    cache = PrefixCache(16, CAPACITY)
    seed = 10**6
    while len(cache) < CAPACITY:
        cache.admit(text(32_000, seed))
        seed += 1
    return cache


def timed(call: Callable[[int], int], first: int, calls: int) -> float:
    """µs per call over `calls` calls numbered from `first`."""
    started = time.perf_counter()
    for number in range(first, first + calls):
        call(number)
    return (time.perf_counter() - started) / calls * 1e6


def measure(size: int, count: int, calls: int) -> dict[str, Any]:
    blocks = size // 64
    point: dict[str, Any] = {"characters": size, "tokens": size // 4, "blocks": blocks}
    cache = full_cache()
    same = text(size, 0)
    cache.admit(same)
    head = same[: size * 3 // 4]
    # Pools of prompts that cycle through more blocks than the cache holds: an LRU has
    # evicted each one's new blocks by the time it comes round again.
    tail_pool = [head + text(size - len(head), n + 1) for n in range(CAPACITY * 4 // blocks + 2)]
    fresh_pool = [text(size, n + 1) for n in range(CAPACITY // blocks + 2)]
    cases: dict[str, tuple[Callable[[int], int], int]] = {
        "hit": (lambda _: cache.admit(same), min(blocks, (size // 4 - 1) // 16) * 16),
        "shared": (lambda n: cache.admit(tail_pool[n % len(tail_pool)]), len(head) // 64 * 16),
        "miss": (lambda n: cache.admit(fresh_pool[n % len(fresh_pool)]), 0),
    }
    warm = max(len(tail_pool), len(fresh_pool)) * 2
    for name, (call, cached) in cases.items():
        found = {call(n) for n in range(warm)}
        assert found == {cached}, (name, found, cached)  # each case is what it says
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for number in range(count):  # the cases take turns, so the box's drift hits all alike
        for name, (call, _) in cases.items():
            figures[name].append(timed(call, warm + number * calls, calls))
            assert len(cache) <= CAPACITY
    for name, (_, cached) in cases.items():
        point[name] = {
            "cached_tokens": cached,
            "best_us": round(min(figures[name]), 1),
            "median_us": round(statistics.median(figures[name]), 1),
        }
    return point


def memory() -> dict[str, float]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = full_cache()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "blocks": len(cache),
        "kib": round((after - before) / 1024),
        "bytes_per_block": round((after - before) / len(cache)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    points = [measure(size, args.rounds, args.calls) for size in SIZES]
    held = memory()
    print("| prompt | blocks | hit µs (best / median) | shared µs | miss µs |")
    print("|---|---|---|---|---|")
    for p in points:
        cells = [f"{p[case]['best_us']} / {p[case]['median_us']}" for case in ("hit", "shared")]
        cells.append(f"{p['miss']['best_us']} / {p['miss']['median_us']}")
        print(f"| {p['characters']:,} chars | {p['blocks']} | " + " | ".join(cells) + " |")
    print(
        f"\nfull cache: {held['blocks']} blocks, {held['kib']} KiB "
        f"({held['bytes_per_block']} bytes a block)"
    )
    path = save(
        "prefix_cache",
        {
            "environment": environment(),
            "capacity_blocks": CAPACITY,
            "block_tokens": 16,
            "rounds": args.rounds,
            "calls": args.calls,
            "points": points,
            "memory": held,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
