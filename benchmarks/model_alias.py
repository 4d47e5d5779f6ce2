"""What an alias costs on the relay's hot path: the served name put back in each event.

    python benchmarks/model_alias.py [--rounds 15] [--calls 200000]

The upstream serves `meta-llama/Llama-3.1-8B-Instruct` and the client asked for `llama`:
every event the upstream writes names the former, and the relay replaces the exact
`"model":"..."` member in the bytes (engines/upstream/model_alias.py). Cases:

- rename, 1 event: `AnswerRename` on one ~230-byte vLLM token delta (two scans, two copies);
- rename, 8 events: on one read of eight of them (what one socket read holds under load);
- feed, 1 event: `StreamRelay.feed` of one such read, without an alias and with one, so the
  difference is what an alias adds to what the relay already pays per read;
- feed, 8 events: the same for a read of eight.

Each figure is the best round (what the code costs) and the median round (what this box
gave), in µs per call, rounds of `--calls` calls (an eighth of them for 8-event reads), the
cases taking turns. Prints a Markdown table and writes benchmarks/results/model_alias.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import environment, save
from trio_gateway.engines.upstream.model_alias import AnswerRename
from trio_gateway.engines.upstream.relay import StreamRelay

UPSTREAM = "meta-llama/Llama-3.1-8B-Instruct"
EVENT = (
    'data: {"id":"chatcmpl-5f3c1a2b9d","object":"chat.completion.chunk","created":1735000000,'
    f'"model":"{UPSTREAM}","choices":[{{"index":0,"delta":{{"content":" token"}},'
    '"logprobs":null,"finish_reason":null}]}\n\n'
).encode()
READ_OF_8 = EVENT * 8


def cases() -> dict[str, Callable[[], object]]:
    rename = AnswerRename(UPSTREAM, "llama")
    plain = StreamRelay("up", forward_usage=False)
    aliased = StreamRelay("up", forward_usage=False, rename=rename)
    return {
        "rename, 1 event": lambda: rename(EVENT),
        "rename, 8 events": lambda: rename(READ_OF_8),
        "feed, 1 event, no alias": lambda: plain.feed(EVENT),
        "feed, 1 event, alias": lambda: aliased.feed(EVENT),
        "feed, 8 events, no alias": lambda: plain.feed(READ_OF_8),
        "feed, 8 events, alias": lambda: aliased.feed(READ_OF_8),
    }


def measure(
    by_case: dict[str, Callable[[], object]], rounds: int, calls: int
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    for _ in range(rounds):
        for case, run in by_case.items():
            n = calls // 8 if "8 events" in case else calls
            started = time.perf_counter()
            for _ in range(n):
                run()
            timings.setdefault(case, []).append((time.perf_counter() - started) / n * 1e6)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    by_case = cases()
    renamed = by_case["feed, 1 event, alias"]()
    assert renamed is not None and b'"model":"llama"' in renamed.payload  # type: ignore[attr-defined]
    timings = measure(by_case, args.rounds, args.calls)
    rows = [
        {
            "case": case,
            "best_us": round(min(values), 3),
            "median_us": round(statistics.median(values), 3),
            "rounds": len(values),
        }
        for case, values in timings.items()
    ]
    print("| case | best µs | median µs |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['best_us']:.3f} | {row['median_us']:.3f} |")
    path = save(
        "model_alias",
        {"environment": environment(), "rounds": args.rounds, "calls": args.calls, "results": rows},
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
