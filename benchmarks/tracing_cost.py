"""What tracing costs a request: the hooks alone, and the gateway under load with it on and off.

    python benchmarks/tracing_cost.py [--spans 20000] [--load-seconds 8] [--rounds 2]

1. Micro: per request, the request path's tracing work with tracing off (the header parse
   and one attribute test: all that runs), with a client `traceparent` passed on, and with
   tracing on (`RequestTracing.start` and `RequestSpan.end` with every attribute, into a
   `BatchSpanProcessor`). With tracing on, the export thread's CPU (OTLP protobuf encoding;
   the HTTP post is left out) is measured too, as process CPU per span after a flush.
2. Load (`--load-seconds 0` skips it): the gateway with its mock engine at c=256 (wrk plus
   the probes of gateway_throughput.py), alternating off and on (`--otlp-endpoint` to a
   local OTLP/HTTP sink that answers 200 to every POST) for `--rounds` rounds, with the load
   averages before each run: the box is shared, compare neighbours, not rounds.
Times are CPU times (the event loop's thread; the process for the export), not wall time.
Prints Markdown tables and writes benchmarks/results/tracing_cost.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_throughput import throughput
from benchmarks.loadgen import environment, free_port, raise_fd_limit, save
from trio_gateway.errors import client_cancelled
from trio_gateway.generation import GenerationRequest
from trio_gateway.http.asgi import header
from trio_gateway.trace_context import clean_tracestate, parse_traceparent
from trio_gateway.tracing import RequestTracing

# A request's headers as curl and the openai SDK send them, give or take.
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"OpenAI/Python 1.0"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-..."),
    (b"content-length", b"120"),
]
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SINK = """
import http.server, sys
received = [0, 0]
class Sink(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%d %d" % tuple(received)).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        received[1] += len(self.rfile.read(int(self.headers.get("content-length", 0))))
        received[0] += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


class EncodingExporter(SpanExporter):
    """Does the OTLP exporter's CPU work (protobuf encoding) and sends nothing."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializePartialToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _request() -> GenerationRequest:
    return GenerationRequest("f", "chat", "mock", "hi", True, max_tokens=100, trace_id="rid")


async def micro(spans: int) -> dict[str, float]:
    """Microseconds per request of each variant of the request path's tracing work."""
    tracing: RequestTracing | None = None
    request = _request()
    results: dict[str, float] = {}

    scope = {"headers": HEADERS}
    start = time.perf_counter()
    for _ in range(spans):  # off, no header: what every request pays
        parent = parse_traceparent(header(scope, b"traceparent"))
        if parent is not None or tracing is not None:
            raise AssertionError
    results["off_no_header_us"] = (time.perf_counter() - start) / spans * 1e6

    start = time.perf_counter()
    for _ in range(spans):  # off, a client's header: checked, then set with the request id
        parent = parse_traceparent(TRACEPARENT)
        clean_tracestate([b"congo=t61rcWkgMzE"])
        assert parent is not None
        parent.header()
    results["off_client_header_us"] = (time.perf_counter() - start) / spans * 1e6

    exporter = EncodingExporter()
    # A queue that holds every span, so that each one's export is counted (by default the
    # processor drops spans past 2048 queued, which a tight loop reaches).
    processor = BatchSpanProcessor(exporter, max_queue_size=spans)
    tracing = RequestTracing(processor, routing_policy="power_of_two")
    parent = parse_traceparent(TRACEPARENT)
    cpu0, thread0 = time.process_time(), time.thread_time()
    for index in range(spans):
        now = trio.current_time()
        span = tracing.start("chat", "mock", now, parent, None, "rid")
        dataclasses.replace(request, traceparent=span.traceparent)
        span.end(
            now + 1.0,
            outcome=client_cancelled() if index % 100 == 0 else None,
            status=200,
            backend="mock",
            attempts=1,
            queue_wait=0.001,
            first_at=now + 0.05,
            started_at=now,
            input_tokens=12,
            output_tokens=100,
            finish_reason="length",
            stream=True,
            max_tokens=100,
        )
    # The event loop's own CPU (this thread's): wall time would count the export thread
    # holding the GIL, and the other tenants of a shared box.
    results["on_request_path_us"] = (time.thread_time() - thread0) / spans * 1e6
    await trio.to_thread.run_sync(tracing._provider.force_flush)
    results["on_cpu_with_export_us"] = (time.process_time() - cpu0) / spans * 1e6
    results["exported_spans"] = exporter.spans
    results["otlp_bytes_per_span"] = round(exporter.bytes / max(exporter.spans, 1))
    await trio.to_thread.run_sync(tracing._provider.shutdown)
    return results


def _sink_totals(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return str(answer.read().decode())


async def load(seconds: float, rounds: int) -> list[dict[str, Any]]:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])  # noqa: ASYNC220
    flags = ("--mock-itl-ms", "10", "--mock-ttft-ms", "5", "--mock-max-num-seqs", "4096")
    runs = []
    try:
        for round_ in range(rounds):
            for tracing in (False, True):
                extra = ("--otlp-endpoint", f"http://127.0.0.1:{port}") if tracing else ()
                loadavg = os.getloadavg()
                print(f"round {round_ + 1}, tracing {tracing}", file=sys.stderr, flush=True)
                (result,) = await throughput((*flags, *extra), [256], seconds)
                # The sink's running totals: export POSTs and bytes (the gateway has stopped,
                # so its last batch is in).
                posts, size = map(int, (await trio.to_thread.run_sync(_sink_totals, port)).split())
                runs.append(
                    {
                        "round": round_ + 1,
                        "tracing": tracing,
                        "loadavg": loadavg,
                        "sink_posts": posts,
                        "sink_bytes": size,
                        **result,
                    }
                )
    finally:
        sink.terminate()
        sink.wait()
    return runs


async def main(spans: int, seconds: float, rounds: int) -> None:
    raise_fd_limit()
    document: dict[str, Any] = {"environment": environment()}
    document["micro"] = found = await micro(spans)
    print(f"\n{spans} requests, microseconds per request:\n")
    print("| off | off, client traceparent | on: event loop's CPU | on: CPU with export |")
    print("|---|---|---|---|")
    print(
        f"| {found['off_no_header_us']:.3f} | {found['off_client_header_us']:.2f} "
        f"| {found['on_request_path_us']:.1f} | {found['on_cpu_with_export_us']:.1f} |"
    )
    print(f"\n{found['otlp_bytes_per_span']} bytes of OTLP protobuf per span")
    if seconds > 0:
        document["load"] = runs = await load(seconds, rounds)
        print(
            "\n| round | tracing | load avg 1/5 min | tok/s | req/s | TTFT p50 ms | CPU % "
            "| OTLP bytes so far |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for run in runs:
            ttft = run["ttft_p50_s"]
            print(
                f"| {run['round']} | {'on' if run['tracing'] else 'off'} "
                f"| {run['loadavg'][0]:.2f} / {run['loadavg'][1]:.2f} "
                f"| {run['tokens_per_s']} | {run['requests_per_s']} "
                f"| {'-' if ttft is None else f'{ttft * 1000:.0f}'} "
                f"| {run['gateway_cpu_percent']} | {run['sink_bytes']} |"
            )
    path = save("tracing_cost", document)
    print(f"\nsaved {path}")
    json.dumps(document)  # what was saved is plain JSON


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--load-seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trio.run(partial(main, args.spans, args.load_seconds, args.rounds))
