"""Client disconnects at every stage of a request: queued in the engine's batch, in prefill,
mid-stream, unary before the answer, during the body upload.

The gateway must notice each at once: the engine's work cancelled (and counted), the
`inflight`, `queued` and `reading` gauges back where they were, the next request served.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from benchmarks.fault_matrix.harness import (
    CANCELLATIONS,
    CHAT,
    CONTENT,
    INFLIGHT,
    QUEUED,
    READING,
    REQUESTS,
    Case,
    Matrix,
    chat,
    gauge,
    metric,
    serves,
    settles,
    start,
    stop,
    stream_open,
)
from benchmarks.fault_matrix.raw_http import Connection, announced_body


async def after_disconnect(
    c: Case, port: int, before: float, inflight: int = 0, *, busy: Iterable[Connection] = ()
) -> None:
    """The cancel was counted, the gauges came back (to `inflight`: the `busy` streams still
    open), and, once the busy streams are closed too, the gateway still serves."""
    cancelled = await settles(
        gauge(port, CANCELLATIONS, reason="client_disconnected"), lambda v: v >= before + 1
    )
    left = await settles(gauge(port, INFLIGHT), lambda v: v == inflight)
    queued = await settles(gauge(port, QUEUED), lambda v: v == 0)
    c.check(
        cancelled == before + 1,
        f"cancellations_total{{client_disconnected}} +{cancelled - before:g}",
    )
    c.check(left == inflight, f"inflight_requests {left:g}, wanted {inflight}")
    c.check(queued == 0, f"queued_requests {queued:g}")
    for connection in busy:
        await connection.aclose()
    if busy:
        rest = await settles(gauge(port, INFLIGHT), lambda v: v == 0)
        c.check(rest == 0, f"inflight {rest:g} once the other streams left")
    problem = await serves(port)
    c.check(not problem, problem)
    c.observed = f"cancel +{cancelled - before:g}, inflight {left:g}, queued {queued:g}, " + (
        "serving" if not problem else "NOT serving"
    )


async def run(matrix: Matrix) -> None:
    """The in-process engine's cases (the worker plane's are in `worker_failures`)."""
    group = "client disconnect"
    gateway = await start("--mock-max-num-seqs", "2")
    port = gateway.port
    cancelled = gauge(port, CANCELLATIONS, reason="client_disconnected")
    expected = "engine cancelled (cancel counted), inflight/queued back to 0, serving"
    try:

        async def queued(c: Case) -> None:
            # Two long streams fill the mock's batch (2 sequences): the third waits in it.
            busy = [await stream_open(port, chat(tokens=2000)) for _ in range(2)]
            for connection in busy:
                await connection.wait_for(lambda raw: raw.count(CONTENT) >= 2)
            before = await cancelled()
            waiting = await stream_open(port, chat(tokens=3))
            depth = await settles(gauge(port, QUEUED), lambda v: v == 1)
            c.check(depth == 1, f"queued_requests {depth:g} with the batch full, wanted 1")
            await waiting.aclose()
            await after_disconnect(c, port, before, inflight=2, busy=busy)

        await matrix.run(group, "while queued (engine batch full)", expected, queued)

        async def prefill(c: Case) -> None:
            before = await cancelled()
            connection = await stream_open(port, chat(tokens=3, ttft_ms=3000))
            busy = await settles(gauge(port, INFLIGHT), lambda v: v == 1)
            c.check(busy == 1, f"inflight {busy:g} during prefill")
            await trio.sleep(0.3)
            c.check(connection.raw == b"", f"bytes before the first token: {connection.raw[:80]!r}")
            await connection.aclose()
            await after_disconnect(c, port, before)

        await matrix.run(group, "during prefill (3 s TTFT)", expected, prefill)

        async def mid_stream(c: Case) -> None:
            before = await cancelled()
            connection = await stream_open(port, chat(tokens=100_000))
            got = await connection.wait_for(lambda raw: raw.count(CONTENT) >= 3)
            c.check(got, "the stream did not start")
            await connection.aclose()
            await after_disconnect(c, port, before)

        await matrix.run(group, "mid-stream", expected, mid_stream)

        async def unary(c: Case) -> None:
            before = await cancelled()
            connection = await stream_open(port, chat(stream=False, tokens=300))
            busy = await settles(gauge(port, INFLIGHT), lambda v: v == 1)
            c.check(busy == 1, f"inflight {busy:g} while generating")
            await trio.sleep(0.3)
            c.check(connection.raw == b"", "the unary answer came before the close")
            await connection.aclose()
            await after_disconnect(c, port, before)

        await matrix.run(group, "unary, before the answer", expected, unary)

        async def upload(c: Case) -> None:
            refused = gauge(port, REQUESTS, error_type="cancelled")
            before = await refused()
            connection = await Connection.open(port)
            await connection.send(announced_body(CHAT, 1000) + b'{"model": "mock", "messages": [')
            reading = await settles(gauge(port, READING), lambda v: v == 1)
            c.check(reading == 1, f"reading_requests {reading:g} during the upload")
            await connection.aclose()
            reading = await settles(gauge(port, READING), lambda v: v == 0)
            counted = await settles(refused, lambda v: v >= before + 1)
            left = await metric(port, INFLIGHT)
            c.check(reading == 0, f"reading_requests {reading:g} after the close")
            c.check(counted == before + 1, f"requests_total{{cancelled}} +{counted - before:g}")
            c.check(left == 0, f"inflight {left:g}")
            problem = await serves(port)
            c.check(not problem, problem)
            c.observed = (
                f"reading 1 -> {reading:g}, counted cancelled +{counted - before:g}, serving"
            )

        await matrix.run(
            group,
            "during body upload",
            "reading gauge back to 0, counted as cancelled, serving",
            upload,
        )
    finally:
        await stop(gateway)
