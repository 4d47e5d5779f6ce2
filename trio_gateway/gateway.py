"""The gateway's state: settings, backends behind a router, the in-flight ledger, metrics,
shutdown, and the nursery everything runs in."""

from __future__ import annotations

import logging
from functools import partial

import trio

from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer import prompt_token_count
from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import model_not_found, unavailable
from trio_gateway.generation import GenerationRequest
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import GracefulShutdown, Phase
from trio_gateway.loop_health import count_tasks, sample_event_loop_lag
from trio_gateway.metrics import GatewayMetrics, backend_label, multiprocess_dir
from trio_gateway.openai.schemas import check_max_tokens, check_prompt_length
from trio_gateway.router.admission import Backend, Router
from trio_gateway.router.policies import CacheAware, make_policy
from trio_gateway.router.prefix_sharing import PrefixSharing
from trio_gateway.sessions.manager import SessionManager
from trio_gateway.sessions.store import RedisSessionStore
from trio_gateway.tls import ClientTLS

log = logging.getLogger("trio_gateway")

WORKER_URL_PREFIXES = ("ws://", "wss://")
# How stale the scrape-time gauges of the processes a scrape does not reach may be.
GAUGE_REFRESH_S = 1.0


def counts_prompts_as_the_mock(engine: Engine) -> bool:
    """Whether the gateway's own prompt count (`prompt_token_count`: four characters a
    token) is `engine`'s: only then may the gateway refuse a prompt as too long for it.

    The gateway has no tokenizer, and a real engine's count can be anything (an upstream's
    tokenizer, its chat template): refusing on a guess would turn away requests the engine
    takes. The mock's count is the gateway's by construction, as they share the function: the
    in-process `MockEngine`, and a worker hosting the mock. A worker says what it hosts only
    through its hello's `streams_unary`, True for the mock and False for `worker --upstream`
    (which relays a unary answer whole); that is the one difference the protocol carries
    today, so it decides here. An engine kind that streamed unary requests with a tokenizer
    of its own would need the hello to say whose count it is, not this.
    """
    if isinstance(engine, MockEngine):
        return True
    from trio_gateway.engines.ws_client import RemoteWorker  # not imported without workers

    return isinstance(engine, RemoteWorker) and engine.streams_unary


def engines_from_config(config: GatewayConfig) -> list[Engine]:
    """`--worker` URLs as engines; with none, the in-process mock engine."""
    if not config.workers:
        return [MockEngine.from_settings(config)]
    return [engine_for_url(url, config) for url in config.workers]


def describe_backends(config: GatewayConfig) -> str:
    """What `engines_from_config` serves, for the start-up line: the mock and its settings,
    or each remote engine's kind and URL (validated: no password in it)."""
    if not config.workers:
        prefill = ""
        if config.mock_prefill_ms_per_1k_tokens:
            prefill = (
                f", prefill {config.mock_prefill_ms_per_1k_tokens:g} ms per 1k uncached "
                f"tokens, prefix cache {config.mock_prefix_cache_blocks} blocks of "
                f"{config.mock_prefix_block_tokens} tokens"
            )
        return (
            f"{config.model} (mock engine: ttft {config.mock_ttft_ms:g} ms, step "
            f"{config.mock_itl_ms:g} ms, {config.mock_max_num_seqs} seqs{prefill})"
        )
    return ", ".join(_describe_url(url, config) for url in config.workers)


def _describe_url(url: str, config: GatewayConfig) -> str:
    if url.startswith(WORKER_URL_PREFIXES):
        return f"worker {url}"
    slots = config.max_inflight or config.upstream_max_inflight
    return f"upstream {url} (at most {slots} in flight)"


def engine_for_url(url: str, config: GatewayConfig) -> Engine:
    """The engine for one backend URL, with its capacity: the one place a backend's slots are
    decided from the settings (a worker says its own in its hello; an upstream takes
    `--upstream-max-inflight`); `--max-inflight`, when set, overrides both in the router.
    Its TLS context too, for https:// and wss:// (`upstream_*` and `worker_*` settings)."""
    secure = url.startswith(("https://", "wss://"))
    if url.startswith(WORKER_URL_PREFIXES):
        from trio_gateway.engines.ws_client import RemoteWorker

        return RemoteWorker(
            url,
            token=config.worker_token or None,
            window=config.credit_window,
            ssl_context=worker_tls(config).context() if secure else None,
        )
    from trio_gateway.engines.upstream.engine import OpenAIUpstream

    return OpenAIUpstream(
        url,
        api_key=config.upstream_api_key or None,
        max_inflight=config.upstream_max_inflight,
        ssl_context=upstream_tls(config).context() if secure else None,
    )


def upstream_tls(config: GatewayConfig) -> ClientTLS:
    return ClientTLS(
        config.upstream_ca_bundle,
        config.upstream_client_cert,
        config.upstream_client_key,
        setting="upstream",
    )


def worker_tls(config: GatewayConfig) -> ClientTLS:
    return ClientTLS(
        config.worker_ca_bundle,
        config.worker_client_cert,
        config.worker_client_key,
        setting="worker",
    )


class Gateway:
    def __init__(self, config: GatewayConfig, engines: list[Engine] | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.ledger = InFlightLedger()
        self.shutdown = GracefulShutdown(self.ledger, config.drain_timeout_s, config.drain_delay_s)
        self.api_keys = config.accepted_api_keys()
        policy = make_policy(config.routing_policy, config.cache_aware(), clock=trio.current_time)
        self.router = Router(
            policy,
            max_inflight=config.max_inflight or None,
            queue_size=config.queue_size,
            queue_timeout=config.queue_timeout_s,
            breaker_threshold=config.breaker_threshold,
            breaker_cooldown=config.breaker_cooldown_s,
        )
        for engine in engines_from_config(config) if engines is None else engines:
            self.router.add(engine)
        # cache_aware replicas sharing one Redis also share what they routed.
        self.prefix_sharing: PrefixSharing | None = None
        if isinstance(policy, CacheAware) and config.session_store:
            self.prefix_sharing = PrefixSharing(
                config.session_store,
                apply=policy.index.record,
                knows=lambda name: self.router.find(name) is not None,
                on_error=self.metrics.prefix_sharing_errors.inc,
            )
            policy.on_record = self.prefix_sharing.publish
        self.session_store = (
            RedisSessionStore(config.session_store, self.metrics.session_store_errors.inc)
            if config.session_store
            else None
        )
        self.sessions = SessionManager(
            self.router,
            self.metrics,
            default_timeout=config.session_timeout_s,
            soft_affinity=config.session_affinity == "soft",
            store=self.session_store,
        )
        self.shutdown.on_stopping.append(partial(self.sessions.close_all, "shutdown"))
        self._nursery: trio.Nursery | None = None
        self._backend_labels: set[str] = set()  # per-backend gauges set by the last refresh

    @property
    def models(self) -> list[str]:
        return self.router.models()

    @property
    def nursery(self) -> trio.Nursery:
        """Where flights run; it exists between ASGI lifespan startup and shutdown."""
        if self._nursery is None:
            raise RuntimeError("the gateway is not running (no ASGI lifespan startup yet)")
        return self._nursery

    @property
    def running(self) -> bool:
        return self._nursery is not None

    @property
    def accepting(self) -> bool:
        """Running, and not shutting down: new requests are taken."""
        return self.running and self.shutdown.accepting

    @property
    def ready(self) -> bool:
        """Accepting, and a request for some model would be routed rather than refused.

        The router answers (`Router.serves_any`), with the same choice a request gets: a
        backend whose breaker is open still counts while panic routing would send requests
        to it, and a connected backend that serves no model yet does not."""
        return self.running and self.shutdown.ready and self.router.serves_any()

    def refresh_gauges(self) -> None:
        """State read at scrape time rather than kept up to date on every change (and every
        second under multiprocess mode, where a scrape reaches one process of several)."""
        metrics = self.metrics
        for phase in Phase:
            metrics.shutdown_phase.labels(phase.value).set(phase is self.shutdown.phase)
        inflight: dict[str, int] = {}
        for backend in self.router.backends:
            label = backend_label(backend.engine)
            inflight[label] = inflight.get(label, 0) + backend.inflight
            metrics.backend_up.labels(label).set(backend.engine.available)
        for label, count in inflight.items():
            metrics.backend_inflight.labels(label).set(count)
        for gone in self._backend_labels - inflight.keys():  # removed by /admin/workers
            metrics.backend_up.remove(gone)
            # Its requests still end, but not on a backend the gateway routes to. Zeroed
            # first: under multiprocess mode the removed child's last value stays in its file.
            metrics.backend_inflight.labels(gone).set(0)
            metrics.backend_inflight.remove(gone)
        self._backend_labels = set(inflight)
        if self.running:
            metrics.live_tasks.set(count_tasks())

    def check_model(self, model: str) -> None:
        """404 before anything starts when no backend serves `model` (503 while some
        backend has not said yet which models it serves)."""
        if self.router.knows(model):
            return
        if any(not backend.engine.models for backend in self.router.backends):
            raise unavailable("Backends are still starting; retry shortly.")
        raise model_not_found(model)

    def check_context_length(self, request: GenerationRequest) -> None:
        """400 before anything starts when `max_tokens`, or the prompt plus `max_tokens`, is
        over the model's context length. The prompt is judged only when every backend that
        may take the request counts it as the gateway does (`counts_prompts_as_the_mock`)
        and says its length: any other one (an upstream) refuses for itself, its 400
        relayed. Of several lengths the largest counts, as for `max_tokens`."""
        model = request.model
        check_max_tokens(request, self.router.context_length(model))
        lengths = []
        for backend in self.router.backends:
            if not backend.serves(model):
                continue
            length = backend.engine.context_lengths.get(model)
            if length is None or not counts_prompts_as_the_mock(backend.engine):
                return
            lengths.append(length)
        if lengths:
            check_prompt_length(request, max(lengths), prompt_token_count(request.prompt))

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every engine's background work in `nursery`, which then hosts the flights."""
        for backend in list(self.router.backends):
            await nursery.start(self._run_backend, backend)
        if self.session_store is not None:
            await nursery.start(self.session_store.run)
        if self.prefix_sharing is not None:
            await nursery.start(self.prefix_sharing.run)
        await nursery.start(self.sessions.run)
        await nursery.start(self.shutdown.run)
        await nursery.start(sample_event_loop_lag, self.metrics)
        self._nursery = nursery
        if multiprocess_dir() is not None:
            nursery.start_soon(self._refresh_gauges_every, GAUGE_REFRESH_S)

    async def _refresh_gauges_every(self, interval: float) -> None:
        """Keeps this process's share of the summed scrape-time gauges current; ends when the
        gateway's nursery is cancelled."""
        while True:
            self.refresh_gauges()
            await trio.sleep(interval)

    def stop(self) -> None:
        self._nursery = None

    async def add_engine(self, engine: Engine) -> None:
        """Route to a new backend while running (`POST /admin/workers`)."""
        backend = self.router.add(engine)
        try:
            await self.nursery.start(self._run_backend, backend)
        except BaseException:
            self.router.remove(backend)
            raise

    def remove_engine(self, name: str) -> bool:
        """Stop routing to a backend and stop its engine; its streams end as `unavailable`."""
        backend = self.router.find(name)
        if backend is None:
            return False
        self.router.remove(backend)
        if backend.scope is not None:
            backend.scope.cancel()
        return True

    async def _run_backend(
        self, backend: Backend, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # A worker's fresh hello (an upstream answering again): capacity for the queue, and
        # an open breaker goes half-open at once rather than after its cooldown.
        backend.engine.on_available = partial(self.router.backend_reconnected, backend)
        with trio.CancelScope() as backend.scope:
            await backend.engine.run(task_status=task_status)
