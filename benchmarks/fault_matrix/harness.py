"""The harness every group of cases runs on: the case and its checks, the runner, the
processes under test, the requests and `/metrics` readings the checks are made of.

A case is an async function given a `Case`; it drives the processes through HTTP only and
calls `case.check(ok, what_was_wrong)` for each thing the README promises. `Matrix.run` gives
it a hard deadline and turns an exception into a failed check, so one broken case never
stops the others.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from benchmarks.fault_matrix.raw_http import Connection, call
from benchmarks.loadgen import GatewayProcess, http_request

TOKEN = "s3cret"  # the worker plane's token
API_KEY = "k1-fault-matrix"
ADMIN_TOKEN = "adm-fault-matrix"
CONTENT = b'"content":'  # one per chat event (the role event's `"content":""` included)
CHAT = "/v1/chat/completions"

# -- the case and the runner ----------------------------------------------------------------


@dataclass
class Case:
    group: str
    name: str
    expected: str
    observed: str = ""
    failures: list[str] = field(default_factory=list)
    checks: int = 0
    seconds: float = 0.0

    def check(self, ok: bool, what: str) -> bool:
        """One check of the case; `what` says what was wrong when it does not hold."""
        self.checks += 1
        if not ok:
            self.failures.append(what)
        return ok

    @property
    def passed(self) -> bool:
        return self.checks > 0 and not self.failures


@dataclass
class Matrix:
    cases: list[Case] = field(default_factory=list)

    async def run(
        self,
        group: str,
        name: str,
        expected: str,
        body: Callable[[Case], Awaitable[None]],
        seconds: float = 30,
    ) -> Case:
        """Run one case under a hard deadline; an exception is a failed check, not a crash."""
        case = Case(group, name, expected)
        started = time.perf_counter()
        try:
            with trio.fail_after(seconds):
                await body(case)
        except trio.TooSlowError:
            case.check(False, f"did not finish within {seconds:g} s")
        except Exception as error:
            case.check(False, f"raised {error!r}")
        case.seconds = time.perf_counter() - started
        self.cases.append(case)
        mark = "pass" if case.passed else "FAIL"
        print(f"  {mark} {group} / {name} ({case.seconds:.1f} s)", file=sys.stderr, flush=True)
        for failure in case.failures:
            print(f"       - {failure}", file=sys.stderr, flush=True)
        return case


# -- requests -------------------------------------------------------------------------------


def chat(stream: bool = True, tokens: int = 3, model: str = "mock", **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if model == "mock":
        body["mock"] = {"tokens": tokens, **mock}
    return body


async def serves(port: int, model: str = "mock", headers: Iterable[tuple[str, str]] = ()) -> str:
    """'' when a normal stream is answered whole (200, tokens, [DONE], no error frame), else
    what went wrong."""
    try:
        answer = await call(port, "POST", CHAT, chat(model=model), headers, seconds=10)
    except (OSError, ConnectionError, trio.TooSlowError) as error:
        return f"normal request failed: {error!r}"
    if (
        answer.status != 200
        or not answer.ends_with_done
        or answer.error_frames
        or not answer.tokens
    ):
        return f"normal request: {answer.short()}"
    return ""


async def stream_open(port: int, body: dict[str, Any], path: str = CHAT) -> Connection:
    connection = await Connection.open(port)
    await connection.send(http_request(port, body, path))
    return connection


async def open_streams(port: int, count: int, body: dict[str, Any]) -> list[Connection]:
    """`count` streams, each once it has its first tokens (headers with X-Worker-Id)."""
    connections = [await stream_open(port, body) for _ in range(count)]
    for connection in connections:
        await connection.wait_for(lambda raw: raw.count(CONTENT) >= 2)
    return connections


def tally(counts: Counter[Any]) -> str:
    """`200x3, 400x5`: how many answers of each status (or kind), in order."""
    return ", ".join(f"{key}x{n}" for key, n in sorted(counts.items()))


# -- /metrics -------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    answer = await call(port, "GET", "/metrics", seconds=10)
    samples = []
    for line in answer.body.decode().splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in await scrape(port)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


async def settles(
    read: Callable[[], Awaitable[float]], want: Callable[[float], bool], seconds: float = 5
) -> float:
    """Poll `read()` every 50 ms until `want(value)` or `seconds` pass; the last value."""
    deadline = trio.current_time() + seconds
    value = await read()
    while not want(value) and trio.current_time() < deadline:
        await trio.sleep(0.05)
        value = await read()
    return value


def gauge(port: int, name: str, **labels: str) -> Callable[[], Awaitable[float]]:
    return partial(metric, port, name, **labels)


INFLIGHT = "trio_gateway_inflight_requests"
QUEUED = "trio_gateway_queued_requests"
READING = "trio_gateway_reading_requests"
CANCELLATIONS = "trio_gateway_cancellations_total"
REQUESTS = "trio_gateway_requests_total"


# -- processes ------------------------------------------------------------------------------


async def start(*flags: str, command: str = "serve", port: int | None = None) -> GatewayProcess:
    """A gateway or worker process; in a thread, since its start polls with blocking sleeps
    and a fake upstream may be served by this very event loop."""
    return await trio.to_thread.run_sync(
        partial(GatewayProcess, *flags, command=command, port=port)
    )


async def stop(*processes: GatewayProcess | None) -> None:
    for process in processes:
        if process is not None:
            await trio.to_thread.run_sync(process.stop)


async def exit_code(process: GatewayProcess, seconds: float) -> int | None:
    """The process's exit code once it exits, None if it is still running after `seconds`."""

    def wait() -> int | None:
        try:
            return process.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    return await trio.to_thread.run_sync(wait)


async def ready_status(port: int) -> int:
    return (await call(port, "GET", "/ready", seconds=5)).status


def log_problems(process: GatewayProcess, since: int = 0) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks in a process's log after byte `since`."""
    text = Path(process.log.name).read_bytes()[since:].decode(errors="replace")
    return [
        line
        for line in text.splitlines()
        if "ERROR" in line or "CRITICAL" in line or "Traceback" in line
    ]


def log_size(process: GatewayProcess) -> int:
    return Path(process.log.name).stat().st_size


async def admin_workers(port: int, token: str | None = None) -> dict[str, dict[str, Any]]:
    headers = [("authorization", f"Bearer {token}")] if token else []
    body = (await call(port, "GET", "/admin/workers", headers=headers)).json()
    entries = body.get("workers", body) if isinstance(body, dict) else body
    return {entry["id"]: entry for entry in entries}
