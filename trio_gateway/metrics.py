"""Prometheus metrics, on a registry per gateway so tests and embedded gateways don't collide.

Under `serve --processes N` a scrape reaches any one of N gateway processes, so each answers
for all of them: prometheus_client's multiprocess mode, on when `PROMETHEUS_MULTIPROC_DIR`
is set (by the supervisor, before the children start). Every process writes its values to
files there; counters and histograms add up, and each gauge says how it combines
(`multiprocess_mode`, ignored in a single process).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from trio_gateway.errors import GatewayError

if TYPE_CHECKING:
    from trio_gateway.engines.protocol import Engine

PREFIX = "trio_gateway_"

# `*_created` series double the exposition and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ITL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """Where the gateway processes of one `serve --processes N` share their metrics."""
    return os.environ.get(MULTIPROC_ENV) or None


def forget_process(pid: int, path: str | None = None) -> None:
    """Stop counting an exited process in the `live*` gauges (its counters stay: a counter
    summed across processes must not go backwards). The supervisor calls it as a child exits,
    with the directory it gave the children (it does not set the variable for itself)."""
    path = path if path is not None else multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def backend_label(engine: Engine, configured: str | None = None) -> str:
    """A backend's `backend` label: the name the operator configured it by, which is its
    `[[backends]]` name (`configured`, the router's `Backend.label`), else the URL given to
    `--worker` or `POST /admin/workers` (without credentials), or the mock's name.

    Never a worker's id from its hello, nor an address a name resolved to: a worker restarted
    says another id, and pods come and go, while every distinct value is a series per family
    for the life of the process (and under multiprocess mode can never be removed). The
    configured name is the operator's bounded set: a backend that goes away and comes back
    under the same URL takes its old series back, and a backend discovered from DNS is to be
    labelled by its configured `dns+` name, all its addresses under one label.
    """
    if configured is not None:
        return configured
    return engine.url if engine.url is not None else engine.name


class BackendSeries:
    """One backend's per-model children, bound once so the per-write path does no `.labels()`
    lookup: a request binds them at its first token (`GatewayMetrics.backend_series`)."""

    __slots__ = ("_requests", "itl", "label", "model", "ttft")

    def __init__(self, metrics: GatewayMetrics, label: str, model: str) -> None:
        self.label = label
        self.model = model
        self.ttft = metrics.backend_ttft.labels(label, model)
        self.itl = metrics.backend_itl.labels(label, model)
        self._requests = metrics.backend_requests

    def request_ended(self, error: GatewayError | None) -> None:
        if error is None:
            self._requests.labels(self.label, self.model, "success", "none").inc()
        else:
            self._requests.labels(self.label, self.model, "error", error.kind.value).inc()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if multiprocess_dir() is not None and values.ValueClass is values.MutexValue:
            # prometheus_client picks where values live once, at its import: these would
            # stay in this process and the summed exposition would not show them.
            raise RuntimeError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported; "
                "set it in the environment of a fresh interpreter"
            )
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Requests by how they ended (status success|error; error_type none when success).",
            ["model", "endpoint", "request_type", "status", "error_type"],
            registry=r,
        )
        # Requests, queues and sessions belong to one process each: the scrape shows their
        # total over the live processes (`livesum`); a forgotten process's ones are gone.
        self.inflight = Gauge(
            PREFIX + "inflight_requests",
            "Requests admitted and not yet ended.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            PREFIX + "queued_requests",
            "Admitted requests still waiting for their first chunk.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reading = Gauge(
            PREFIX + "reading_requests",
            "Requests accepted and still receiving their body (not yet in inflight); each "
            "ends within its body-read deadline (408).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from admission to the end of the response.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from admission to the first chunk.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between chunks, observed once per response write as the mean over its tokens.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.output_tokens = Counter(
            PREFIX + "output_tokens_total",
            "Output tokens passed to clients, counted as each batch goes to the response writer.",
            ["model"],
            registry=r,
        )
        self.disconnects = Counter(
            PREFIX + "disconnected_clients_total",
            "Clients that went away before their response ended.",
            ["model"],
            registry=r,
        )
        self.cancellations = Counter(
            PREFIX + "cancellations_total",
            "Request scopes cancelled, by reason.",
            ["reason"],
            registry=r,
        )

        self.sessions_active = Gauge(
            PREFIX + "sessions_active",
            "Sessions open (with an affinity to a worker).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.sessions_opened = Counter(
            PREFIX + "sessions_opened_total", "Sessions opened on a worker.", registry=r
        )
        self.sessions_closed = Counter(
            PREFIX + "sessions_closed_total",
            "Sessions closed, by reason (explicit, expired, worker_lost, shutdown).",
            ["reason"],
            registry=r,
        )

        self.session_store_errors = Counter(
            PREFIX + "session_store_errors_total",
            "Session store calls that failed or timed out (affinity fell back to local).",
            registry=r,
        )
        self.prefix_sharing_errors = Counter(
            PREFIX + "prefix_sharing_errors_total",
            "Redis calls sharing routed prefixes between replicas that failed or timed out "
            "(cache_aware routed on this replica's picture only).",
            registry=r,
        )

        self.event_loop_lag = Histogram(
            PREFIX + "event_loop_lag_seconds",
            "How late a periodic task wakes up: time the event loop spent on other work.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        # The scrape-time gauges below are also refreshed every second under multiprocess
        # mode (`Gateway.refresh_gauges`), as only the scraped process refreshes them here.
        self.live_tasks = Gauge(
            PREFIX + "live_tasks",
            "Trio tasks alive in the gateway process.",
            registry=r,
            multiprocess_mode="livesum",  # the processes' total: what the host runs
        )
        self.shutdown_phase = Gauge(
            PREFIX + "shutdown_phase",
            "1 for the shutdown phase the gateway is in (running, draining, stopping, stopped).",
            ["phase"],
            registry=r,
            # 1 for every phase some live process is in: "draining" shows as soon as one is.
            multiprocess_mode="livemax",
        )
        self.backend_up = Gauge(
            PREFIX + "backend_up",
            "1 when a backend (worker, upstream, the in-process mock) can take requests.",
            ["backend"],
            registry=r,
            # 0 when any live process cannot reach the backend: its share of requests fails.
            multiprocess_mode="livemin",
        )

        # Per backend, in families of their own: the ones above keep their labels (dashboards
        # and alerts read them), and a request that never reached a backend (refused, 404,
        # 429 from the queue) has no series here. `backend` is `backend_label`: bounded.
        self.backend_requests = Counter(
            PREFIX + "backend_requests_total",
            "Requests by the backend they ended on (a request retried on another backend "
            "counts on the last one) and how they ended.",
            ["backend", "model", "status", "error_type"],
            registry=r,
        )
        self.backend_ttft = Histogram(
            PREFIX + "backend_time_to_first_token_seconds",
            "Time from the dispatch to the backend (after any wait in the gateway's queue) to "
            "the first chunk.",
            ["backend", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_itl = Histogram(
            PREFIX + "backend_inter_token_latency_seconds",
            "Time between chunks by backend, observed once per response write as the mean "
            "over its tokens.",
            ["backend", "model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.backend_inflight = Gauge(
            PREFIX + "backend_inflight_requests",
            "Requests holding a slot on the backend (the router's count, read at scrape "
            "time); a removed backend's series goes.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._backend_series: dict[tuple[str, str], BackendSeries] = {}

    def backend_series(self, label: str, model: str) -> BackendSeries:
        """The bound children of one backend and model, made on first use and kept: both
        are from bounded sets (`backend_label`, the served models)."""
        series = self._backend_series.get((label, model))
        if series is None:
            series = self._backend_series[label, model] = BackendSeries(self, label, model)
        return series

    def request_ended(
        self,
        model: str,
        endpoint: str,
        stream: bool,
        error: GatewayError | None,
    ) -> None:
        self.requests.labels(
            model,
            endpoint,
            "stream" if stream else "unary",
            "success" if error is None else "error",
            "none" if error is None else error.kind.value,
        ).inc()

    def exposition(self) -> bytes:
        """What `/metrics` answers: this gateway's registry, or under multiprocess mode every
        process's values summed (read from the shared directory at each scrape)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path)  # type: ignore[no-untyped-call]
        return generate_latest(summed)
