"""A thousand open streams closed at once: every cancel counted, `inflight` back to 0, not
one error line in the log, and the gateway still serving.
"""

from __future__ import annotations

import trio

from benchmarks.fault_matrix.harness import (
    CANCELLATIONS,
    CONTENT,
    INFLIGHT,
    Case,
    Matrix,
    chat,
    gauge,
    log_problems,
    log_size,
    metric,
    serves,
    settles,
    stream_open,
)
from benchmarks.loadgen import GatewayProcess


async def run(matrix: Matrix, gateway: GatewayProcess, count: int) -> None:
    port = gateway.port

    async def all_close(c: Case) -> None:
        since = log_size(gateway)
        before = await metric(port, CANCELLATIONS, reason="client_disconnected")
        started = trio.Semaphore(0)
        close_now = trio.Event()
        failed: list[str] = []

        async def one() -> None:
            try:
                connection = await stream_open(port, chat(tokens=100_000, itl_ms=100))
            except OSError as error:
                failed.append(repr(error))
                started.release()
                return
            try:
                if not await connection.wait_for(lambda raw: CONTENT in raw):
                    failed.append(connection.raw[:100].decode(errors="replace"))
                started.release()
                await close_now.wait()
            finally:
                await connection.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
            for _ in range(count):
                await started.acquire()
            open_streams_now = await metric(port, INFLIGHT)
            close_now.set()
        closed_at = trio.current_time()
        left = await settles(gauge(port, INFLIGHT), lambda v: v == 0, 15)
        drained_s = trio.current_time() - closed_at
        cancelled = await settles(
            gauge(port, CANCELLATIONS, reason="client_disconnected"),
            lambda v: v >= before + count,
        )
        problems = log_problems(gateway, since)
        problem = await serves(port)
        c.check(not failed, f"{len(failed)} streams did not open: {failed[:3]}")
        c.check(open_streams_now == count, f"inflight {open_streams_now:g} before, wanted {count}")
        c.check(left == 0, f"inflight {left:g} afterwards")
        c.check(cancelled - before == count, f"cancellations +{cancelled - before:g}")
        c.check(not problems, f"error logs: {problems[:3]}")
        c.check(not problem, problem)
        c.observed = (
            f"{open_streams_now:g} open -> inflight {left:g} in {drained_s:.2f} s; "
            f"cancels +{cancelled - before:g}; {len(problems)} error log lines; serving"
        )

    await matrix.run(
        "mass disconnect",
        f"{count} open streams closed at once",
        "inflight back to 0, every cancel counted, no error logs, serving",
        all_close,
        seconds=90,
    )
