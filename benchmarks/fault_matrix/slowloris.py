"""Slowloris: connections that trickle header lines, or a body, a byte at a time.

The gateway's keep-alive bound must close the first kind without an answer, its body-read
deadline must answer the second 408, and a normal request must be served meanwhile.
"""

from __future__ import annotations

from collections import Counter

import trio

from benchmarks.fault_matrix.harness import CHAT, READING, Case, Matrix, gauge, serves, settles
from benchmarks.fault_matrix.raw_http import Connection, announced_body


async def run(matrix: Matrix, port: int, count: int) -> None:
    group = "slowloris"

    async def headers(c: Case) -> None:
        ended: list[float] = []
        answered: list[bytes] = []
        started = trio.current_time()

        async def trickle() -> None:
            connection = await Connection.open(port)
            try:
                await connection.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
                with trio.move_on_after(12):
                    while True:
                        try:
                            await connection.send(b"x-a: b\r\n")
                        except (trio.BrokenResourceError, OSError):
                            break
                        with trio.move_on_after(0.5):
                            if not await connection.receive():
                                break
                ended.append(trio.current_time() - started)
                answered.append(connection.raw)
            finally:
                await connection.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(trickle)
            await trio.sleep(1)
            probe_started = trio.current_time()
            problem = await serves(port)
            probe_s = trio.current_time() - probe_started
        c.check(len(ended) == count, f"{len(ended)} of {count} ended")
        c.check(all(t < 8 for t in ended), f"closed after {max(ended, default=0):.1f} s")
        c.check(all(raw == b"" for raw in answered), "a trickling connection got an answer")
        c.check(not problem, f"during the trickle: {problem}")
        c.observed = (
            f"{count} closed without an answer after {min(ended, default=0):.1f}-"
            f"{max(ended, default=0):.1f} s; a normal request meanwhile {probe_s * 1000:.0f} ms"
        )

    await matrix.run(
        group,
        f"{count} connections trickling header lines (one each 0.5 s)",
        "closed by the 5 s keep-alive bound, no answer; others served meanwhile",
        headers,
    )

    async def bodies(c: Case) -> None:
        statuses: Counter[int] = Counter()
        ended: list[float] = []
        started = trio.current_time()

        async def trickle() -> None:
            connection = await Connection.open(port)
            try:
                await connection.send(announced_body(CHAT, 100_000) + b"{")
                with trio.move_on_after(12):
                    while b"\r\n\r\n" not in connection.raw:
                        try:
                            await connection.send(b" ")
                        except (trio.BrokenResourceError, OSError):
                            break
                        with trio.move_on_after(0.5):
                            if not await connection.receive():
                                break
                ended.append(trio.current_time() - started)
                if b"\r\n\r\n" in connection.raw:
                    statuses[int(connection.raw.split(b" ", 2)[1])] += 1
            finally:
                await connection.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(trickle)
            reading = await settles(gauge(port, READING), lambda v: v == count, 3)
            problem = await serves(port)
        after = await settles(gauge(port, READING), lambda v: v == 0)
        c.check(reading == count, f"reading_requests {reading:g} while trickling, wanted {count}")
        c.check(statuses[408] == count, f"answers {dict(statuses)}")
        c.check(all(t < 8 for t in ended), f"answered after {max(ended, default=0):.1f} s")
        c.check(after == 0, f"reading_requests {after:g} afterwards")
        c.check(not problem, f"during the trickle: {problem}")
        c.observed = (
            f"reading gauge {reading:g} -> {after:g}; {statuses[408]}x 408 after "
            f"{min(ended, default=0):.1f}-{max(ended, default=0):.1f} s; served meanwhile"
        )

    await matrix.run(
        group,
        f"{count} connections trickling bodies (a byte each 0.5 s)",
        "408 at the 5 s body-read deadline; reading gauge N -> 0; others served",
        bodies,
    )
