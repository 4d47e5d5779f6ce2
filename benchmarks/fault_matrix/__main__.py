"""`python -m benchmarks.fault_matrix`: runs the chosen groups in order, then the report."""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import trio

from benchmarks import fault_matrix
from benchmarks.fault_matrix import (
    auth_bypass,
    client_disconnects,
    framing,
    mass_disconnect,
    mutated_bodies,
    sigterm,
    slowloris,
    upstream_shapes,
    worker_failures,
)
from benchmarks.fault_matrix.harness import Matrix, start, stop
from benchmarks.fault_matrix.report import print_tables, save_results
from benchmarks.loadgen import raise_fd_limit

GROUPS = [
    "disconnect",
    "worker",
    "upstream",
    "sigterm",
    "mutated",
    "framing",
    "slowloris",
    "mass",
    "auth",
]


async def main(groups: list[str], quick: bool, seed: int) -> int:
    raise_fd_limit()
    matrix = Matrix()
    started = time.perf_counter()
    disconnects = 200 if quick else 1000
    mutations = 100 if quick else 300
    if "disconnect" in groups:
        await client_disconnects.run(matrix)
    if "worker" in groups:
        await worker_failures.run(matrix)
    if "upstream" in groups:
        await upstream_shapes.run(matrix)
    if "sigterm" in groups:
        await sigterm.run(matrix)
    # These four share one gateway: none of them stops it or leaves it changed.
    shared = {"mutated", "framing", "slowloris", "mass"} & set(groups)
    if shared:
        gateway = await start("--mock-max-num-seqs", "4096", "--mock-tokens", "3")
        try:
            if "mutated" in groups:
                await mutated_bodies.run(matrix, gateway.port, mutations, seed)
            if "framing" in groups:
                await framing.run(matrix, gateway.port)
            if "slowloris" in groups:
                await slowloris.run(matrix, gateway.port, 20)
            if "mass" in groups:
                await mass_disconnect.run(matrix, gateway, disconnects)
        finally:
            await stop(gateway)
    if "auth" in groups:
        await auth_bypass.run(matrix)
    elapsed = time.perf_counter() - started

    print_tables(matrix.cases)
    path = save_results(matrix.cases, quick=quick, seed=seed, seconds=elapsed)
    tried = len(matrix.cases)
    passed = sum(case.passed for case in matrix.cases)
    print(f"\n{passed}/{tried} cases passed in {elapsed:.0f} s; saved {path}")
    return 0 if passed == tried else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fault_matrix",
        description=(fault_matrix.__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--quick", action="store_true", help="fewer disconnects and bodies")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"some of {','.join(GROUPS)}")
    parser.add_argument("--seed", type=int, default=16, help="the mutated bodies' seed")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; choose from {GROUPS}")
    sys.exit(trio.run(partial(main, chosen, args.quick, args.seed)))
