"""What TLS on the client side costs the proxy path: the same gateway, plain and with
`--certfile/--keyfile`, under the same streaming load.

    python benchmarks/tls_cost.py [--seconds 5] [--concurrency 1,64] [--rounds 2]

Load: `loadgen.BODY` (streaming chat, 100 tokens at 10 ms, 5 ms prefill) on keep-alive
connections from this script's raw-socket client (wrapped in `trio.SSLStream` for TLS; the
certificate comes from trustme). Per mode and concurrency: tokens/s, TTFT and ITL medians,
the gateway's CPU per 1000 tokens over the window, and the time from a new connection
(connect, TLS handshake, request) to the first token, median of 20. Rounds alternate the two
modes so the box's noise hits both alike; the load averages before and after are recorded,
as the box is shared. Prints a Markdown table and writes benchmarks/results/tls_cost.json.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import (
    BODY,
    LoopbackProcess,
    StreamStats,
    cpu_seconds,
    environment,
    http_request,
    median,
    run_stream,
    save,
)

FRESH_SAMPLES = 20


def ms(value: float | None) -> float:
    return float("nan") if value is None else value * 1000


def gateway(tls: tuple[str, str] | None) -> LoopbackProcess:
    exe = Path(sys.executable).parent / "trio-gateway"
    flags = ["--certfile", tls[0], "--keyfile", tls[1]] if tls else []
    return LoopbackProcess(
        lambda port: [str(exe), "serve", "--port", str(port), "--log-level", "warning", *flags],
        name="gateway-tls" if tls else "gateway",
    )


async def connect(port: int, client: ssl.SSLContext | None) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if client is None:
        return tcp
    stream = trio.SSLStream(tcp, client, server_hostname="127.0.0.1", https_compatible=True)
    await stream.do_handshake()
    return stream


async def load(
    port: int, client: ssl.SSLContext | None, connections: int, seconds: float
) -> StreamStats:
    """`connections` keep-alive clients streaming back to back for `seconds`."""
    stats = StreamStats()
    request = http_request(port, BODY)
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        stream = await connect(port, client)
        async with stream:
            while time.perf_counter() < deadline:
                if not await run_stream(stream, request, stats):  # type: ignore[arg-type]
                    return

    with trio.fail_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
    return stats


async def fresh_connection_ttft(port: int, client: ssl.SSLContext | None) -> float:
    """Median time from a new connection's dial to its first token."""
    body = dict(BODY, mock={"tokens": 1, "ttft_ms": 0})
    request = http_request(port, body)
    times = []
    for _ in range(FRESH_SAMPLES):
        started = time.perf_counter()
        with trio.fail_after(30):
            stream = await connect(port, client)
            connected = time.perf_counter()
            async with stream:
                stats = StreamStats()
                assert await run_stream(stream, request, stats)  # type: ignore[arg-type]
        times.append(connected - started + stats.ttft[0])
    return median(times)


async def measure(
    port: int, pid: int, client: ssl.SSLContext | None, connections: int, seconds: float
) -> dict[str, Any]:
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    stats = await load(port, client, connections, seconds)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "tokens_per_s": stats.tokens / elapsed,
        "ttft_ms": ms(median(stats.ttft)),
        "itl_ms": ms(median(stats.itl)),
        "gateway_cpu_s_per_1k_tokens": 1000 * cpu / max(stats.tokens, 1),
        "errors": stats.errors,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    ca = trustme.CA()
    folder = Path(tempfile.mkdtemp(prefix="tls-cost-"))
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {"load_before": os.getloadavg(), "rows": []}
    results["settings"] = {"seconds": args.seconds, "rounds": args.rounds, "body": BODY}
    servers = {"plain": gateway(None), "tls": gateway((str(cert), str(key)))}
    contexts = {"plain": None, "tls": client}
    try:
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for c in concurrencies:
                for mode, server in servers.items():
                    row = await measure(server.port, server.pid, contexts[mode], c, args.seconds)
                    runs.setdefault((mode, c), []).append(row)
        fresh = {
            mode: ms(await fresh_connection_ttft(server.port, contexts[mode]))
            for mode, server in servers.items()
        }
    finally:
        for server in servers.values():
            server.stop()
    for (mode, c), rows in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        merged: dict[str, Any] = {k: median([r[k] for r in rows]) for k in rows[0] if k != "errors"}
        merged["errors"] = sum(r["errors"] for r in rows)
        results["rows"].append({"mode": mode, "concurrency": c, **merged})
    results["fresh_connection_first_token_ms"] = fresh
    results["load_after"] = os.getloadavg()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| mode | concurrency | tokens/s | TTFT p50 ms | ITL p50 ms | gateway CPU s / 1k tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['mode']} | {row['concurrency']} | {row['tokens_per_s']:.0f} | "
            f"{row['ttft_ms']:.1f} | {row['itl_ms']:.2f} | "
            f"{row['gateway_cpu_s_per_1k_tokens']:.3f} |"
        )
    fresh = results["fresh_connection_first_token_ms"]
    lines.append("")
    lines.append(
        f"New connection to first token (median of {FRESH_SAMPLES}): plain {fresh['plain']:.1f} "
        f"ms, TLS {fresh['tls']:.1f} ms. Load average before "
        f"{'/'.join(f'{x:.2f}' for x in results['load_before'])}, after "
        f"{'/'.join(f'{x:.2f}' for x in results['load_after'])}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    outcome = trio.run(main, arguments)
    outcome["environment"] = environment()
    print(table(outcome))
    save("tls_cost", outcome)
