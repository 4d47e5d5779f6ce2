"""SIGTERM to `trio-gateway serve`: idle, mid-stream within the drain deadline, past it, a
second SIGTERM, during a body upload.

Each gateway gets its own process (a drained one is gone), all five started at once. What
the README promises: `/ready` 503 at once, new work refused with 503 `draining` and
Retry-After, streams finished within the deadline and cut past it with a `shutdown` frame and
`[DONE]`, a second SIGTERM cuts at once, exit 0 every time.
"""

from __future__ import annotations

import json
import signal
import time
from functools import partial

import trio

from benchmarks.fault_matrix.harness import (
    CHAT,
    CONTENT,
    READING,
    Case,
    Matrix,
    chat,
    exit_code,
    gauge,
    open_streams,
    ready_status,
    settles,
    start,
    stop,
)
from benchmarks.fault_matrix.raw_http import (
    Connection,
    body_of,
    call,
    openai_error,
    request_bytes,
    stream_answer,
    stream_ended,
)
from benchmarks.loadgen import GatewayProcess


async def run(matrix: Matrix) -> None:
    group = "SIGTERM"
    settings = {
        "idle": ("--drain-timeout-s", "10"),
        "within": ("--drain-timeout-s", "10"),
        "past": ("--drain-timeout-s", "1"),
        "second": ("--drain-timeout-s", "30"),
        "upload": ("--drain-timeout-s", "10"),
    }
    gateways: dict[str, GatewayProcess] = {}

    async def launch(name: str, flags: tuple[str, ...]) -> None:
        gateways[name] = await start(*flags)

    try:
        async with trio.open_nursery() as nursery:  # five starts at once: ~2 s, not ~8
            for name, flags in settings.items():
                nursery.start_soon(launch, name, flags)

        async def idle(c: Case) -> None:
            gateway = gateways["idle"]
            sent = time.perf_counter()
            gateway.proc.send_signal(signal.SIGTERM)
            code = await exit_code(gateway, 10)
            took = time.perf_counter() - sent
            c.check(code == 0, f"exit code {code}")
            c.check(took < 3, f"exit after {took:.1f} s")
            c.observed = f"exit {code} after {took * 1000:.0f} ms"

        await matrix.run(group, "idle", "exit 0 at once (< 3 s)", idle)

        async def within(c: Case) -> None:
            gateway = gateways["within"]
            [connection] = await open_streams(gateway.port, 1, chat(tokens=150))  # 1.5 s
            gateway.proc.send_signal(signal.SIGTERM)
            ready = await settles(partial(ready_status, gateway.port), lambda v: v == 503)
            refused = await call(gateway.port, "POST", CHAT, chat())
            error = openai_error(refused)
            answer = await stream_answer(connection)
            code = await exit_code(gateway, 10)
            c.check(ready == 503, f"/ready {ready:g} while draining")
            c.check(
                refused.status == 503
                and error is not None
                and error["code"] == "draining"
                and refused.headers.get("retry-after") == "5",
                f"new request while draining: {refused.short()} {refused.headers}",
            )
            c.check(
                answer.tokens >= 150 and answer.ends_with_done and not answer.error_frames,
                f"stream: {answer.tokens} tokens, frames {answer.error_frames}",
            )
            c.check(code == 0, f"exit code {code}")
            c.observed = (
                f"/ready 503; new request {refused.status} {error and error['code']}; stream "
                f"whole ({answer.tokens} tokens); exit {code}"
            )

        await matrix.run(
            group,
            "mid-stream, within the drain deadline",
            "/ready 503, new work 503 draining + Retry-After, stream whole, exit 0",
            within,
        )

        async def past(c: Case) -> None:
            gateway = gateways["past"]
            [connection] = await open_streams(gateway.port, 1, chat(tokens=100_000, itl_ms=100))
            sent = time.perf_counter()
            gateway.proc.send_signal(signal.SIGTERM)
            await connection.wait_for(stream_ended)
            cut_after = time.perf_counter() - sent
            answer = body_of(connection)
            code = await exit_code(gateway, 10)
            types = [frame.get("type") for frame in answer.error_frames]
            c.check(types == ["shutdown"] and answer.ends_with_done, f"frames {types}")
            c.check(1 <= cut_after < 3, f"cut {cut_after:.2f} s after SIGTERM (deadline 1 s)")
            c.check(code == 0, f"exit code {code}")
            c.observed = f"cut at {cut_after:.2f} s: `shutdown` frame + [DONE]; exit {code}"

        await matrix.run(
            group,
            "mid-stream, past the drain deadline (1 s)",
            "cut at the deadline with a `shutdown` frame + [DONE], exit 0",
            past,
        )

        async def second(c: Case) -> None:
            gateway = gateways["second"]
            [connection] = await open_streams(gateway.port, 1, chat(tokens=100_000, itl_ms=100))
            gateway.proc.send_signal(signal.SIGTERM)
            ready = await settles(partial(ready_status, gateway.port), lambda v: v == 503)
            still = connection.raw.count(CONTENT)
            with trio.move_on_after(1):
                await connection.wait_for(lambda raw: raw.count(CONTENT) > still + 2)
            c.check(connection.raw.count(CONTENT) > still + 2, "the first SIGTERM cut the stream")
            sent = time.perf_counter()
            gateway.proc.send_signal(signal.SIGTERM)
            await connection.wait_for(stream_ended)
            cut_after = time.perf_counter() - sent
            answer = body_of(connection)
            code = await exit_code(gateway, 10)
            types = [frame.get("type") for frame in answer.error_frames]
            c.check(ready == 503, f"/ready {ready:g}")
            c.check(types == ["shutdown"] and answer.ends_with_done, f"frames {types}")
            c.check(cut_after < 1.5, f"cut {cut_after:.2f} s after the second SIGTERM")
            c.check(code == 0, f"exit code {code}")
            c.observed = (
                f"drain under way; second SIGTERM cut it in {cut_after * 1000:.0f} ms "
                f"(`shutdown` frame + [DONE]); exit {code}"
            )

        await matrix.run(
            group,
            "second SIGTERM during a 30 s drain",
            "cut at once: `shutdown` frame + [DONE], exit 0",
            second,
        )

        async def upload(c: Case) -> None:
            gateway = gateways["upload"]
            payload = json.dumps(chat()).encode()
            half = len(payload) // 2
            connection = await Connection.open(gateway.port)
            await connection.send(request_bytes("POST", CHAT, payload)[: -len(payload) + half])
            reading = await settles(gauge(gateway.port, READING), lambda v: v == 1)
            gateway.proc.send_signal(signal.SIGTERM)
            ready = await settles(partial(ready_status, gateway.port), lambda v: v == 503)
            await connection.send(payload[half:])
            answer = await connection.answer()
            await connection.aclose()
            error = openai_error(answer)
            code = await exit_code(gateway, 10)
            c.check(reading == 1, f"reading_requests {reading:g} before SIGTERM")
            c.check(ready == 503, f"/ready {ready:g}")
            c.check(
                answer.status == 503 and error is not None and error["code"] == "draining",
                f"answer {answer.short()}",
            )
            c.check(code == 0, f"exit code {code}")
            code_seen = error and error["code"]
            c.observed = f"body finished in the drain: {answer.status} {code_seen}; exit {code}"

        await matrix.run(
            group,
            "during a body upload",
            "the upload holds the drain; its request gets 503 draining; exit 0",
            upload,
        )
    finally:
        await stop(*gateways.values())
