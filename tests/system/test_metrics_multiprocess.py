"""Metrics summed across gateway processes (`serve --processes N`, prometheus multiprocess mode).

prometheus_client decides where values live when it is first imported, from the environment,
so multiprocess mode runs in fresh interpreters here: recorders that stay alive until told to
exit (synchronised through their stdin and stdout, never by sleeping), and a scraper. Every
wait on a child is bounded.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.metric_samples import samples, value

TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]

# One gateway process's worth of traffic: argv is requests, backend up (0|1), phase.
RECORDER = """
import os, sys
from trio_gateway.metrics import GatewayMetrics
from trio_gateway.errors import unavailable

requests, up, phase = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
metrics = GatewayMetrics()
for _ in range(requests):
    metrics.request_ended("mock", "chat", True, None)
    metrics.output_tokens.labels("mock").inc(10)
    metrics.ttft.labels("mock").observe(0.003)
metrics.request_ended("mock", "chat", False, unavailable("down"))
metrics.inflight.labels("mock").inc(requests)
metrics.sessions_active.inc()
metrics.live_tasks.set(7)
for name in ("running", "draining", "stopping", "stopped"):
    metrics.shutdown_phase.labels(name).set(name == phase)
metrics.backend_up.labels("mock").set(up)
replica = metrics.backend_series("http://a:8000/v1", "mock")
for _ in range(requests):
    replica.request_ended(None)
    replica.ttft.observe(0.2)
    replica.itl.observe(0.01)
replica.request_ended(unavailable("down"))
metrics.backend_inflight.labels("http://a:8000/v1").set(requests)
print(os.getpid(), flush=True)
sys.stdin.readline()  # alive until the test says so
"""

# `argv[1:]`: pids to forget before the scrape.
SCRAPER = """
import sys
from trio_gateway.metrics import GatewayMetrics, forget_process

for pid in sys.argv[1:]:
    forget_process(int(pid))
sys.stdout.write(GatewayMetrics().exposition().decode())
"""

# A running gateway on a mock clock, never scraped through `/metrics`: only the periodic
# refresh can have written its scrape-time gauges.
RUNNING_GATEWAY = """
import trio, trio.testing
from trio_gateway.config import GatewayConfig
from trio_gateway.gateway import GAUGE_REFRESH_S, Gateway

async def main() -> None:
    gateway = Gateway(GatewayConfig())
    async with trio.open_nursery() as nursery:
        await gateway.start(nursery)
        await trio.sleep(GAUGE_REFRESH_S * 2.5)
        print(gateway.metrics.exposition().decode(), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


# A gateway whose backend holds 3 requests when it is removed: the scrape must not keep
# showing them (a removed child's value stays in its file unless it is zeroed first).
REMOVED_BACKEND = """
import trio, trio.testing
from trio_gateway.config import GatewayConfig
from trio_gateway.gateway import Gateway

async def main() -> None:
    gateway = Gateway(GatewayConfig())
    async with trio.open_nursery() as nursery:
        await gateway.start(nursery)
        (backend,) = gateway.router.backends
        backend.inflight = 3
        gateway.refresh_gauges()
        print(gateway.metrics.exposition().decode(), flush=True)
        print("---", flush=True)
        assert gateway.fleet.remove_engine("mock")
        gateway.refresh_gauges()
        print(gateway.metrics.exposition().decode(), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


def child_env(metrics_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def run_python(code: str, *args: str, metrics_dir: Path | None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env(metrics_dir),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def recorder(metrics_dir: Path, requests: int, up: int, phase: str) -> Iterator[int]:
    """A live gateway process that has recorded its traffic; yields its pid."""
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(requests), str(up), phase],
        env=child_env(metrics_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        readable, _, _ = select.select([process.stdout], [], [], TIMEOUT_S)
        assert readable, "the recorder did not report in time"
        line = process.stdout.readline()
        assert line.strip().isdigit(), line + process.communicate(timeout=TIMEOUT_S)[1]
        yield int(line)
        process.stdin.write("exit\n")
        process.stdin.flush()
        assert process.wait(timeout=TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT_S)


def test_a_scrape_sums_every_process_and_forgets_exited_ones(tmp_path: Path) -> None:
    with (
        recorder(tmp_path, requests=2, up=1, phase="running") as first,
        recorder(tmp_path, requests=3, up=0, phase="draining") as second,
    ):
        both = samples(run_python(SCRAPER, metrics_dir=tmp_path))
        ok = {"model": "mock", "endpoint": "chat", "request_type": "stream"}
        assert value(both, "requests_total", **ok, status="success", error_type="none") == 5
        failed = {"model": "mock", "endpoint": "chat", "request_type": "unary"}
        assert (
            value(both, "requests_total", **failed, status="error", error_type="unavailable") == 2
        )
        assert value(both, "output_tokens_total", model="mock") == 50
        assert value(both, "time_to_first_token_seconds_count", model="mock") == 5
        assert value(both, "time_to_first_token_seconds_bucket", model="mock", le="0.001") == 0
        assert value(both, "time_to_first_token_seconds_bucket", model="mock", le="0.005") == 5
        assert value(both, "inflight_requests", model="mock") == 5  # livesum
        assert value(both, "sessions_active") == 2
        assert value(both, "live_tasks") == 14
        assert value(both, "shutdown_phase", phase="running") == 1  # livemax: any process
        assert value(both, "shutdown_phase", phase="draining") == 1
        assert value(both, "shutdown_phase", phase="stopped") == 0
        assert value(both, "backend_up", backend="mock") == 0  # livemin: one cannot reach it
        replica = {"backend": "http://a:8000/v1", "model": "mock"}
        served = {**replica, "status": "success", "error_type": "none"}
        assert value(both, "backend_requests_total", **served) == 5
        down = {**replica, "status": "error", "error_type": "unavailable"}
        assert value(both, "backend_requests_total", **down) == 2
        assert value(both, "backend_time_to_first_token_seconds_count", **replica) == 5
        assert value(both, "backend_inter_token_latency_seconds_count", **replica) == 5
        assert value(both, "backend_inflight_requests", backend="http://a:8000/v1") == 5
        # Every gauge has a mode that merges processes: none is split by a `pid` label.
        assert not [key for key in both if any(label == "pid" for label, _ in key[1])]

        one = samples(run_python(SCRAPER, str(second), metrics_dir=tmp_path))
        assert value(one, "inflight_requests", model="mock") == 2
        assert value(one, "sessions_active") == 1
        assert value(one, "live_tasks") == 7
        assert value(one, "shutdown_phase", phase="draining") == 0
        assert value(one, "backend_up", backend="mock") == 1
        assert value(one, "backend_inflight_requests", backend="http://a:8000/v1") == 2
        assert value(one, "backend_requests_total", **served) == 5
        # Counters and histograms keep the forgotten process's share: they never go back.
        assert value(one, "requests_total", **ok, status="success", error_type="none") == 5
        assert value(one, "time_to_first_token_seconds_count", model="mock") == 5
        assert first != second


def test_a_running_gateway_refreshes_its_scrape_time_gauges(tmp_path: Path) -> None:
    scraped = samples(run_python(RUNNING_GATEWAY, metrics_dir=tmp_path))
    assert value(scraped, "shutdown_phase", phase="running") == 1
    assert value(scraped, "shutdown_phase", phase="draining") == 0
    assert value(scraped, "backend_up", backend="mock") == 1
    assert value(scraped, "live_tasks") > 5
    assert value(scraped, "backend_inflight_requests", backend="mock") == 0


def test_a_removed_backend_leaves_no_requests_in_flight(tmp_path: Path) -> None:
    before, after = run_python(REMOVED_BACKEND, metrics_dir=tmp_path).split("---")
    assert value(samples(before), "backend_inflight_requests", backend="mock") == 3
    assert (
        samples(after).get(
            ("trio_gateway_backend_inflight_requests", frozenset({("backend", "mock")})), 0.0
        )
        == 0
    )


def test_setting_the_directory_after_import_fails_loudly(tmp_path: Path) -> None:
    late = (
        "import os, prometheus_client\n"
        f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
        "from trio_gateway.metrics import GatewayMetrics\n"
        "try:\n"
        "    GatewayMetrics()\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    assert "set after prometheus_client was imported" in run_python(late, metrics_dir=None)
