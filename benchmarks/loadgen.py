"""A small SSE load client on raw trio sockets, plus the helpers the benchmarks share.

Raw sockets rather than httpx: a Python client competes with the gateway for the same two
cores, so the less it spends per event the more the figures say about the gateway.
Throughput at high concurrency comes from `wrk` (C) instead; this client measures latency.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

CONTENT = b'{"content":'
TEXT = b'"text":"'
DONE = b"data: [DONE]"
RESULTS = Path(__file__).parent / "results"
BODY = {
    "model": "mock",
    "stream": True,
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
    "mock": {"tokens": 100, "itl_ms": 10, "ttft_ms": 5},
}


def http_request(port: int, body: dict[str, Any], path: str = "/v1/chat/completions") -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


@dataclass
class StreamStats:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)  # per request: mean gap between tokens
    tokens: int = 0
    token_reads: int = 0  # socket reads that carried tokens: tokens / token_reads = coalescing
    requests: int = 0
    errors: int = 0


async def run_stream(stream: trio.SocketStream, request: bytes, stats: StreamStats) -> bool:
    """One streamed request on a keep-alive connection; False if the response was bad."""
    sent = time.perf_counter()
    await stream.send_all(request)
    first = last = 0.0
    tokens = 0
    tail = b""
    head_checked = False
    while True:
        data = await stream.receive_some(65536)
        if not data:
            stats.errors += 1
            return False
        now = time.perf_counter()
        window = tail + data
        if not head_checked:
            head_checked = True
            if not window.startswith(b"HTTP/1.1 200"):
                stats.errors += 1
                return False
        found = window.count(CONTENT) - tail.count(CONTENT)
        if found:
            stats.token_reads += 1
            if not tokens:
                first = now
            tokens += found
            last = now
        tail = window[-64:]
        if DONE in window and window.endswith(b"0\r\n\r\n"):
            break
    stats.requests += 1
    stats.tokens += tokens
    stats.ttft.append(first - sent)
    if tokens > 1:
        stats.itl.append((last - first) / (tokens - 1))
    return True


async def probe(port: int, connections: int, seconds: float, body: dict[str, Any]) -> StreamStats:
    """`connections` keep-alive clients, each streaming requests back to back for `seconds`."""
    stats = StreamStats()
    request = http_request(port, body)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            while time.perf_counter() < deadline:
                if not await run_stream(stream, request, stats):
                    return

    with trio.fail_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(client)
    return stats


class MetricsReader:
    """Reads the gateway's /metrics on one keep-alive connection, opened before the load:
    a new connection under a burst of a thousand would wait its turn to be accepted."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, port: int) -> MetricsReader:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def window(
        self,
        sample: Callable[[], Awaitable[dict[str, float]]],
        warmup: float,
        seconds: float,
        into: dict[str, float],
    ) -> None:
        """After `warmup`, the change in each of `sample()`'s readings over `seconds`, put in
        `into` (a task of the load's nursery fills it while the load runs)."""
        await trio.sleep(warmup)
        start = await sample()
        end_at = trio.current_time() + seconds
        while trio.current_time() < end_at:  # a scrape every 2 s keeps the connection alive
            await trio.sleep(min(2.0, end_at - trio.current_time()))
            await self.total("trio_gateway_output_tokens_total")
        end = await sample()
        into.update({key: end[key] - start[key] for key in start})

    async def total(self, name: str) -> float:
        """The sum of every sample of one metric (all label sets)."""
        with trio.fail_after(30):
            await self._stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            while b"\r\n\r\n" not in self._buffer:
                self._buffer += await self._receive()
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(self._buffer) < length:
                self._buffer += await self._receive()
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def _receive(self) -> bytes:
        data = await self._stream.receive_some(1 << 16)
        if not data:
            raise RuntimeError("the gateway closed the metrics connection")
        return data


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (`serve --processes N` runs the gateways as children)."""
    tree = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            tree.extend(process_tree(int(child)))
    return tree


def rss_kib(pid: int) -> int:
    """Resident memory of the process and its children."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue  # exited meanwhile
        total += next(int(line.split()[1]) for line in status.splitlines() if "VmRSS:" in line)
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the process and its children, alive ones."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def ready(port: int) -> bool:
    """`GET /ready` says 200: a backend (a worker, an upstream) is up, not just the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused, 503 (HTTPError), timeout
        return False


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN on `port` (one per gateway process; SO_REUSEPORT lets several)."""
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += local.endswith(suffix) and state == "0A"
    return count


class LoopbackProcess:
    """A server as a subprocess on a free loopback port (or `port`: a restart on the same
    address): started once it listens (and, with `http_ready`, once `/ready` says 200),
    stopped with SIGTERM, then SIGKILL after 10 s."""

    def __init__(
        self,
        argv: Callable[[int], list[str]],
        *,
        name: str,
        listeners: int = 1,
        http_ready: bool = False,
        cwd: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            argv(self.port), cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if listening_sockets(self.port) >= listeners and (not http_ready or ready(self.port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start; see {self.log.name}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class GatewayProcess(LoopbackProcess):
    """`trio-gateway serve` (or `worker`) on a free loopback port."""

    def __init__(self, *flags: str, command: str = "serve", port: int | None = None) -> None:
        exe = Path(sys.executable).parent / "trio-gateway"
        if command == "worker":
            flags = ("--metrics-port", "0", *flags)
        listeners = 1
        if "--processes" in flags:
            listeners = int(flags[flags.index("--processes") + 1])
        super().__init__(
            lambda port: [
                *(str(exe), command, "--port", str(port), "--log-level", "warning"),
                *flags,
            ],
            name="gateway",
            listeners=listeners,
            http_ready=command == "serve",
            port=port,
        )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, connections: int, seconds: float, body: dict[str, Any]) -> dict[str, Any]:
    """wrk -t1, one thread: the load generator stays on one of the two cores."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
        )
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "30s",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout} {done.stderr}")
    out = done.stdout
    os.unlink(script.name)
    rps = next(float(line.split()[1]) for line in out.splitlines() if "Requests/sec" in line)
    bad = [
        line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line
    ]
    return {"requests_per_s": rps, "errors": bad}


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "wrk": wrk_available(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(name: str, document: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    del soft
