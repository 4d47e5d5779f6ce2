"""Workers killed, stopped and restarted under a gateway with two `trio-gateway worker`s.

`kill -9` mid-stream must end that worker's streams with an `unavailable` frame and `[DONE]`
while the other worker's go on; `kill -9` before the first token must be invisible (the
requests retried elsewhere); a restarted worker is redialled; SIGTERM drains it. Two
"client disconnect" cases run here too, since they need the worker plane: the `cancel`
reaching the worker, and leaving the gateway's admission queue.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from benchmarks.fault_matrix.client_disconnects import after_disconnect
from benchmarks.fault_matrix.harness import (
    CANCELLATIONS,
    CHAT,
    CONTENT,
    INFLIGHT,
    QUEUED,
    TOKEN,
    Case,
    Matrix,
    admin_workers,
    chat,
    exit_code,
    gauge,
    metric,
    open_streams,
    serves,
    settles,
    start,
    stop,
    stream_open,
)
from benchmarks.fault_matrix.raw_http import Answer, Connection, call, stream_answer, stream_ended
from benchmarks.loadgen import GatewayProcess, free_port


@dataclass
class Worker:
    """A `trio-gateway worker` that can be killed and started again on the same ports."""

    worker_id: str
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: GatewayProcess | None = None

    async def start(self) -> None:
        self.process = await start(
            *("--metrics-port", str(self.metrics_port), "--worker-id", self.worker_id),
            *("--token", TOKEN, "--mock-max-num-seqs", "64"),
            command="worker",
            port=self.port,
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def metric(self, name: str, **labels: str) -> float:
        return await metric(self.metrics_port, name, **labels)


def worker_of(connection: Connection) -> str:
    match = re.search(rb"(?i)\r\nx-worker-id: *([^\r]+)", connection.raw)
    return match.group(1).decode() if match else "?"


async def wait_available(port: int, worker_id: str, want: bool, seconds: float = 12) -> bool:
    async def state() -> float:
        entry = (await admin_workers(port)).get(worker_id, {})
        return 1.0 if entry.get("available") else 0.0

    return await settles(state, lambda v: v == (1.0 if want else 0.0), seconds) == (
        1.0 if want else 0.0
    )


async def run(matrix: Matrix) -> None:
    group = "worker failures"
    w1, w2 = Worker("w1"), Worker("w2")
    gateway: GatewayProcess | None = None
    try:
        await w1.start()
        await w2.start()
        workers = {"w1": w1, "w2": w2}
        gateway = await start("--worker", w1.url, "--worker", w2.url, "--worker-token", TOKEN)
        port = gateway.port

        async def cancel_on_worker(c: Case) -> None:
            [connection] = await open_streams(port, 1, chat(tokens=100_000))
            worker = workers[worker_of(connection)]
            before = await worker.metric(
                "trio_gateway_worker_cancellations_total", reason="client_disconnected"
            )
            await connection.aclose()
            after = await settles(
                partial(
                    worker.metric,
                    "trio_gateway_worker_cancellations_total",
                    reason="client_disconnected",
                ),
                lambda v: v >= before + 1,
            )
            active = await settles(
                partial(worker.metric, "trio_gateway_worker_active_requests"), lambda v: v == 0
            )
            c.check(after == before + 1, f"worker cancellations +{after - before:g}")
            c.check(active == 0, f"worker active_requests {active:g}")
            left = await settles(gauge(port, INFLIGHT), lambda v: v == 0)
            c.check(left == 0, f"gateway inflight {left:g}")
            problem = await serves(port)
            c.check(not problem, problem)
            c.observed = (
                f"{worker.worker_id}: cancel +{after - before:g}, active {active:g}; "
                f"gateway inflight {left:g}"
            )

        await matrix.run(
            "client disconnect",
            "mid-stream, on a worker",
            "`cancel` reaches the worker: its generation stops (active 0), serving",
            cancel_on_worker,
        )

        async def admission_queue(c: Case) -> None:
            # A second gateway on the same workers, one request per worker at a time: two
            # long streams take both slots, the third waits in the admission queue.
            narrow = await start(
                *("--worker", w1.url, "--worker", w2.url, "--worker-token", TOKEN),
                *("--max-inflight", "1"),
            )
            try:
                busy = await open_streams(narrow.port, 2, chat(tokens=100_000))
                before = await metric(narrow.port, CANCELLATIONS, reason="client_disconnected")
                waiting = await stream_open(narrow.port, chat(tokens=3))
                depth = await settles(gauge(narrow.port, QUEUED), lambda v: v == 1)
                c.check(depth == 1, f"queued_requests {depth:g} with both slots taken")
                await waiting.aclose()
                await after_disconnect(c, narrow.port, before, inflight=2, busy=busy)
            finally:
                await stop(narrow)

        await matrix.run(
            "client disconnect",
            "while queued for a worker slot (admission queue)",
            "leaves the queue at once (cancel counted, queued 0); the slots serve the next",
            admission_queue,
        )

        async def kill_mid_stream(c: Case) -> None:
            connections = await open_streams(port, 4, chat(tokens=100_000))
            placed = [worker_of(connection) for connection in connections]
            victim = placed[0]
            workers[victim].process.proc.kill()  # type: ignore[union-attr]
            survivors = [i for i, w in enumerate(placed) if w != victim]
            cut = 0
            for connection, worker in zip(connections, placed, strict=True):
                if worker != victim:
                    continue
                answer = await stream_answer(connection)
                types = [frame.get("type") for frame in answer.error_frames]
                ok = types == ["unavailable"] and answer.ends_with_done
                cut += ok
                c.check(
                    ok,
                    f"stream on {victim}: error frames {types}, [DONE] {answer.ends_with_done}",
                )
            for i in survivors:  # the other worker's streams go on
                size = connections[i].raw.count(CONTENT)

                def grew(raw: bytes, size: int = size) -> bool:
                    return raw.count(CONTENT) > size + 2

                await connections[i].wait_for(grew)
                c.check(not connections[i].eof, "a stream on the surviving worker ended")
            for connection in connections:
                await connection.aclose()
            gone = await wait_available(port, victim, False, 5)
            c.check(gone, f"{victim} still listed available")
            problem = await serves(port)
            c.check(not problem, problem)
            c.observed = (
                f"{cut}/{placed.count(victim)} streams on {victim}: `unavailable` + [DONE]; "
                f"{len(survivors)} on the other went on; serving"
            )

        await matrix.run(
            group,
            "kill -9 mid-stream",
            "its streams end with an `unavailable` frame + [DONE]; others go on; serving",
            kill_mid_stream,
        )

        async def restart(c: Case) -> None:
            dead = [w for w in workers.values() if w.process and w.process.proc.poll() is not None]
            for worker in dead:
                await worker.start()
                back = await wait_available(port, worker.worker_id, True)
                c.check(back, f"{worker.worker_id} not available again within 12 s")
            connections = await open_streams(port, 6, chat(tokens=30))
            placed = Counter(worker_of(connection) for connection in connections)
            for connection in connections:
                await connection.wait_for(stream_ended)
                await connection.aclose()
            for worker in dead:
                c.check(
                    placed[worker.worker_id] > 0,
                    f"no request reached {worker.worker_id}: {dict(placed)}",
                )
            c.check(bool(dead), "no worker was down")
            c.observed = f"restarted {[w.worker_id for w in dead]}; 6 streams placed {dict(placed)}"

        await matrix.run(
            group,
            "restart after kill",
            "redialled (available again), serves again",
            restart,
            seconds=40,
        )

        async def kill_before_first_token(c: Case) -> None:
            answers: list[Answer] = []

            async def one() -> None:
                answers.append(
                    await call(port, "POST", CHAT, chat(tokens=3, ttft_ms=1500), seconds=20)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)
                loads: dict[str, dict[str, Any]] = {}
                for _ in range(40):
                    loads = await admin_workers(port)
                    if sum(entry["inflight"] for entry in loads.values()) >= 4:
                        break
                    await trio.sleep(0.05)
                victim = max(loads, key=lambda w: loads[w]["inflight"])
                on_victim = loads[victim]["inflight"]
                workers[victim].process.proc.kill()  # type: ignore[union-attr]
            survivor = next(w for w in workers if w != victim)
            intact = [
                a
                for a in answers
                if a.status == 200
                and a.ends_with_done
                and not a.error_frames
                and a.headers.get("x-worker-id") == survivor
            ]
            c.check(on_victim > 0, "no request was on the killed worker")
            c.check(len(intact) == 4, f"answers: {[a.short() for a in answers if a not in intact]}")
            c.observed = (
                f"{on_victim} of 4 in prefill on {victim}; {len(intact)}/4 answered whole "
                f"by {survivor}"
            )
            await workers[victim].start()  # for the next case
            c.check(await wait_available(port, victim, True), f"{victim} did not come back")

        await matrix.run(
            group,
            "kill -9 before the first token",
            "requests not started are retried on the other worker: all 200, whole",
            kill_before_first_token,
            seconds=45,
        )

        async def sigterm_worker(c: Case) -> None:
            [connection] = await open_streams(port, 1, chat(tokens=150))  # 1.5 s
            name = worker_of(connection)
            worker = workers[name]
            worker.process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            during = await serves(port)
            answer = await stream_answer(connection)
            await connection.aclose()
            code = await exit_code(worker.process, 10)  # type: ignore[arg-type]
            c.check(
                answer.tokens >= 150 and answer.ends_with_done and not answer.error_frames,
                f"draining worker's stream: {answer.tokens} tokens, {answer.error_frames}",
            )
            c.check(not during, f"during the drain: {during}")
            c.check(code == 0, f"worker exit code {code}")
            c.observed = (
                f"stream on {name} whole ({answer.tokens} tokens, [DONE]); new request "
                f"{'served' if not during else 'failed'} meanwhile; exit {code}"
            )
            await worker.start()

        await matrix.run(
            group,
            "SIGTERM the worker mid-stream",
            "it drains: its stream ends whole, new requests go elsewhere, exit 0",
            sigterm_worker,
            seconds=40,
        )
    finally:
        await stop(gateway, w1.process, w2.process)
