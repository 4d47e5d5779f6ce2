"""What the worker plane's codec costs per frame: encode + decode, as gateway and worker pay it.

    python benchmarks/plane_codec.py [--rounds 15] [--calls 20000] [--compare OLD_CODEC.py]

Cases, each one `encode` then `decode` of the same message:

- chunk: a streamed chat token (a ~190-byte SSE event, the default keys), the frame every
  token of every remote request crosses;
- final chunk: the last one, with `tokens`, `finish_reason` and `prompt_tokens`;
- chunks x8: eight requests' chunks in one frame (a batch step under load);
- generate 8 KiB: a `generate` whose chat body holds an 8 KiB message; decoding it includes
  the worker's `parse_generation_request` of the body, whichever codec.

Each figure is the best round (what the code costs) and the median round (what this box
gave), in µs per encode + decode, rounds of `--calls` calls, the cases taking turns.
`--compare` also measures another codec module with the same API (`encode`, `decode`,
`ChunkFrame`, `Chunks`, `Generate`), e.g. the hand-written one this package replaced:
`git show 037697d:trio_gateway/worker/protocol.py > /tmp/old_protocol.py` (its last version).
Prints a Markdown table and writes benchmarks/results/plane_codec.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import environment, save
from trio_gateway.openai.schemas import parse_generation_request
from trio_gateway.plane import codec, frames

SSE_EVENT = (
    'data: {"id":"chatcmpl-5f3c1a","object":"chat.completion.chunk","created":1735000000,'
    '"model":"mock","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}'
    "\n\n"
)
BODY: dict[str, Any] = {
    "model": "mock",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "word " * (8192 // 5)},
    ],
    "stream": True,
    "max_tokens": 64,
}


def load_codec(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_codec", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def cases(
    encode: Callable[[Any], str], decode: Callable[[str], Any], types: Any
) -> dict[str, Callable[[], object]]:
    chunk = types.ChunkFrame("req-0123456789abcdef", SSE_EVENT)
    final = types.ChunkFrame("req-0123456789abcdef", SSE_EVENT, 3, "stop", 1234)
    batch = types.Chunks(tuple(types.ChunkFrame(f"req-{i:016x}", SSE_EVENT) for i in range(8)))
    request = parse_generation_request(BODY, "chat", "req-0123456789abcdef")
    generate = types.Generate("req-0123456789abcdef", request, 32)
    return {
        "chunk": lambda: decode(encode(chunk)),
        "final chunk": lambda: decode(encode(final)),
        "chunks x8": lambda: decode(encode(batch)),
        "generate 8 KiB": lambda: decode(encode(generate)),
    }


def measure(
    codecs: dict[str, dict[str, Callable[[], object]]], rounds: int, calls: int
) -> dict[tuple[str, str], list[float]]:
    """µs per call of every case of every codec, one list of rounds each, in turns."""
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, by_case in codecs.items():
            for case, run in by_case.items():
                n = calls // 20 if case == "generate 8 KiB" else calls
                started = time.perf_counter()
                for _ in range(n):
                    run()
                elapsed = time.perf_counter() - started
                timings.setdefault((name, case), []).append(elapsed / n * 1e6)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--compare", metavar="OLD_CODEC.py", default=None)
    args = parser.parse_args()

    codecs = {"msgspec (plane.codec)": cases(codec.encode, codec.decode, frames)}
    if args.compare:
        old = load_codec(args.compare)
        codecs[f"compared ({Path(args.compare).name})"] = cases(old.encode, old.decode, old)
    for by_case in codecs.values():  # each case must round-trip before it is timed
        for run in by_case.values():
            run()
    timings = measure(codecs, args.rounds, args.calls)

    rows = []
    for (name, case), values in timings.items():
        rows.append(
            {
                "codec": name,
                "case": case,
                "best_us": round(min(values), 3),
                "median_us": round(statistics.median(values), 3),
                "rounds": len(values),
            }
        )
    print("| codec | case | best µs | median µs |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['codec']} | {row['case']} | {row['best_us']:.2f} | {row['median_us']:.2f} |")
    path = save(
        "plane_codec",
        {
            "environment": environment(),
            "rounds": args.rounds,
            "calls": args.calls,
            "results": rows,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
