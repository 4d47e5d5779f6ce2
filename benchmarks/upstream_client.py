"""The upstream HTTP client against httpx, reading the same SSE streams from a local server.

    python benchmarks/upstream_client.py [--streams 256] [--events 300] [--interval-ms 10]
                                         [--rounds 3]

The server (a bare epoll loop in a process of its own, so its CPU is not counted) answers
each request with chunked SSE, one event per chunk and per write, as vLLM and llama.cpp do.
Two runs:

    paced   every stream gets an event each `--interval-ms` (a generation at that speed):
            all clients keep up, each read holds about one event, and the figure that
            matters is the client's CPU per event (what relaying costs the gateway);
    flood   the server writes as fast as it can: events/s at saturation (reads then hold
            several events, which flatters the slower client).

Client CPU is this process's `time.process_time()` over the run, so the figures include
trio's own scheduling. "events/piece": events per body piece handed to the caller (this
client: one socket read; httpx's `aiter_bytes`: one h11 Data event, i.e. one chunk, however
many a read held). Also the CPU of decoding one chunked read (h11 against the client's
own decoder), no I/O. Prints a Markdown table and writes benchmarks/results/upstream_client.json.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import environment, raise_fd_limit, save
from trio_gateway.engines.upstream.client import UpstreamPool
from trio_gateway.engines.upstream.client.framing import ChunkedBody

EVENT = (
    b'data: {"id":"chatcmpl-4f1b2c","object":"chat.completion.chunk","created":1764600000,'
    b'"model":"llama-3.1-8b","choices":[{"index":0,"delta":{"content":" token"},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
HTTPX_SHARDS = 16  # as trio_gateway/engines/openai_upstream.py spreads its streams today


# -- the server (its own process) ------------------------------------------------------------
# A bare epoll loop rather than trio: it must write an event for a few µs of CPU, or it is
# the server, not the client, that the figures measure.


class _Peer:
    __slots__ = ("due", "inbox", "outbox", "pause", "remaining", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()  # what a full socket buffer did not take
        self.remaining = 0  # events still to send on the current response
        self.pause = 0.0
        self.due = 0.0


def _serve() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    peers: dict[int, _Peer] = {}
    streaming: dict[int, _Peer] = {}

    def write(peer: _Peer, data: bytes) -> None:
        if peer.outbox:
            peer.outbox += data
            return
        try:
            sent = peer.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            peer.outbox += data[sent:]
            poller.modify(peer.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def drop(fd: int) -> None:
        peer = peers.pop(fd)
        streaming.pop(fd, None)
        poller.unregister(fd)
        peer.sock.close()

    def requests(peer: _Peer) -> None:
        while (end := peer.inbox.find(b"\r\n\r\n")) >= 0:
            head = bytes(peer.inbox[: end + 4])
            del peer.inbox[: end + 4]  # GETs only: no body
            # GET /stream/<events>/<µs between events>
            _, count, interval = head.split(b" ", 2)[1].decode().rsplit("/", 2)
            write(peer, HEAD)
            peer.remaining, peer.pause, peer.due = int(count), int(interval) / 1e6, 0.0
            streaming[peer.sock.fileno()] = peer

    while True:
        timeout = -1.0
        if streaming:
            timeout = max(0.0, min(peer.due for peer in streaming.values()) - time.monotonic())
        for fd, mask in poller.poll(timeout):
            if fd == listener.fileno():
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sock, _ = listener.accept()
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        peers[sock.fileno()] = _Peer(sock)
                        poller.register(sock.fileno(), select.EPOLLIN)
                continue
            peer = peers.get(fd)
            if peer is None:
                continue
            if mask & select.EPOLLOUT and peer.outbox:
                try:
                    sent = peer.sock.send(peer.outbox)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    drop(fd)
                    continue
                del peer.outbox[:sent]
                if not peer.outbox:
                    poller.modify(fd, select.EPOLLIN)
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = peer.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(fd)
                    continue
                peer.inbox += data
                requests(peer)
        now = time.monotonic()
        for fd, peer in list(streaming.items()):
            if peer.outbox or peer.due > now:
                continue
            peer.remaining -= 1
            try:
                write(peer, CHUNK + b"0\r\n\r\n" if not peer.remaining else CHUNK)
            except OSError:
                drop(fd)
                continue
            peer.due = now + peer.pause
            if not peer.remaining:
                del streaming[fd]


class Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# -- the clients -----------------------------------------------------------------------------

Reader = Callable[[str], Awaitable[tuple[int, int]]]  # target -> (body bytes, reads)


async def with_pool(port: int, body: Callable[[Reader], Awaitable[None]]) -> None:
    async with UpstreamPool(f"http://127.0.0.1:{port}", max_idle=1024) as pool:

        async def read(target: str) -> tuple[int, int]:
            size = reads = 0
            async with pool.stream("GET", target, [(b"accept", b"text/event-stream")]) as r:
                while data := await r.receive_some():
                    size += len(data)
                    reads += 1
            return size, reads

        await body(read)


async def with_httpx(port: int, body: Callable[[Reader], Awaitable[None]], shards: int) -> None:
    clients = [
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64, keepalive_expiry=4.0
            ),
            trust_env=False,
        )
        for _ in range(shards)
    ]
    turn = 0
    try:

        async def read(target: str) -> tuple[int, int]:
            nonlocal turn
            client = clients[turn % shards]
            turn += 1
            size = reads = 0
            async with client.stream("GET", target, headers={"accept": "text/event-stream"}) as r:
                async for data in r.aiter_bytes():
                    size += len(data)
                    reads += 1
            return size, reads

        await body(read)
    finally:
        for client in clients:
            await client.aclose()


CLIENTS: dict[str, Callable[[int, Callable[[Reader], Awaitable[None]]], Awaitable[None]]] = {
    "this client (1 pool)": with_pool,
    "httpx (1 client)": partial(with_httpx, shards=1),
    f"httpx ({HTTPX_SHARDS} clients, today)": partial(with_httpx, shards=HTTPX_SHARDS),
}


async def measure(
    port: int, client: str, streams: int, events: int, interval_us: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def body(read: Reader) -> None:
        async def warm() -> None:  # connections open and pooled before the clock starts
            await read("/stream/1/0")

        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(warm)
        totals = [0, 0]

        async def one() -> None:
            size, reads = await read(f"/stream/{events}/{interval_us}")
            assert size == events * len(EVENT), size
            totals[0] += size
            totals[1] += reads

        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        count = streams * events
        result.update(
            events=count,
            wall_s=round(wall, 3),
            events_per_s=round(count / wall),
            cpu_s=round(cpu, 3),
            cpu_us_per_event=round(cpu / count * 1e6, 2),
            cpu_utilisation=round(cpu / wall, 3),
            events_per_piece=round(count / totals[1], 2),
        )

    await CLIENTS[client](port, body)
    return result


def decode_cost(rounds: int = 200_000) -> dict[str, float]:
    """µs of CPU to decode one socket read holding one SSE chunk, h11 against `ChunkedBody`."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(HEAD)
    assert isinstance(connection.next_event(), h11.Response)
    start = time.process_time()
    for _ in range(rounds):
        connection.receive_data(CHUNK)
        parts = []
        while isinstance(event := connection.next_event(), h11.Data):
            parts.append(event.data)
        assert b"".join(parts) == EVENT
    h11_us = (time.process_time() - start) / rounds * 1e6
    decoder = ChunkedBody()
    start = time.process_time()
    for _ in range(rounds):
        assert decoder.feed(CHUNK) == EVENT
    own_us = (time.process_time() - start) / rounds * 1e6
    return {"h11_us_per_read": round(h11_us, 2), "own_decoder_us_per_read": round(own_us, 2)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each run's median over `--rounds`, the clients taking turns so the box's noise (other
    processes on a small machine) hits them alike."""
    server = Server()
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        for mode, events, interval_us in (
            ("paced", args.events, args.interval_ms * 1000),
            ("flood", args.events * 4, 0),
        ):
            for _ in range(args.rounds):
                for client in CLIENTS:
                    result = await measure(server.port, client, args.streams, events, interval_us)
                    rounds.setdefault(f"{mode} / {client}", []).append(result)
                    print(f"  {mode:5} {client:28} {result}", file=sys.stderr)
    finally:
        server.stop()
    return {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        | {"rounds": results}
        for name, results in rounds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--events", type=int, default=300, help="per stream (paced; flood: 4x)")
    parser.add_argument("--interval-ms", type=int, default=10, help="between events (paced)")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve()
        return
    raise_fd_limit()
    decode = decode_cost()
    runs = trio.run(run, args)
    print(
        f"\n{args.streams} streams, one SSE event ({len(EVENT)} bytes) per chunk, "
        f"medians of {args.rounds} rounds\n"
    )
    print("| run | client | events/s | client CPU µs/event | client CPU | events/piece |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, result in runs.items():
        mode, client = name.split(" / ")
        print(
            f"| {mode} | {client} | {result['events_per_s']:,} | {result['cpu_us_per_event']} |"
            f" {result['cpu_utilisation']:.0%} | {result['events_per_piece']} |"
        )
    print(
        f"\nDecoding one read of one chunk: h11 {decode['h11_us_per_read']} µs, "
        f"the client's decoder {decode['own_decoder_us_per_read']} µs."
    )
    path = save(
        "upstream_client",
        {
            "environment": environment(),
            "streams": args.streams,
            "event_bytes": len(EVENT),
            "paced_interval_ms": args.interval_ms,
            "rounds": args.rounds,
            "runs": runs,
            "decode": decode,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
