"""Prometheus metrics, on a registry per gateway so tests and embedded gateways don't collide."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from trio_gateway.openai.errors import APIError

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


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Requests by how they ended (status success|error; error_type none when success).",
            ["model", "endpoint", "request_type", "status", "error_type"],
            registry=r,
        )
        self.inflight = Gauge(
            PREFIX + "inflight_requests",
            "Requests admitted and not yet ended.",
            ["model"],
            registry=r,
        )
        self.queued = Gauge(
            PREFIX + "queued_requests",
            "Admitted requests still waiting for their first chunk.",
            ["model"],
            registry=r,
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
            "Output tokens passed to clients, counted as each batch is written.",
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

        self.event_loop_lag = Histogram(
            PREFIX + "event_loop_lag_seconds",
            "How late a periodic task wakes up: time the event loop spent on other work.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.live_tasks = Gauge(
            PREFIX + "live_tasks", "Trio tasks alive in the gateway process.", registry=r
        )
        self.shutdown_phase = Gauge(
            PREFIX + "shutdown_phase",
            "1 for the shutdown phase the gateway is in (running, draining, stopping, stopped).",
            ["phase"],
            registry=r,
        )
        self.backend_up = Gauge(
            PREFIX + "backend_up",
            "1 when a backend (worker, upstream, the in-process mock) can take requests.",
            ["backend"],
            registry=r,
        )

    def request_ended(
        self,
        model: str,
        endpoint: str,
        stream: bool,
        error: APIError | None,
    ) -> None:
        self.requests.labels(
            model,
            endpoint,
            "stream" if stream else "unary",
            "success" if error is None else "error",
            "none" if error is None else error.error_type,
        ).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
