"""The gateway's state: settings, backends behind a router, the in-flight ledger, metrics,
shutdown, and the nursery everything runs in."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from trio_gateway.backend_urls import redact
from trio_gateway.backends_config import (
    BackendsDiff,
    BackendSpec,
    diff_backends,
    specs_from_urls,
)
from trio_gateway.config import ConfigError, GatewayConfig
from trio_gateway.discovery.members import dns_name, member_specs
from trio_gateway.discovery.resolver import Resolver, SystemResolver
from trio_gateway.discovery.watch import DnsWatch
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.mock_answer import prompt_token_count
from trio_gateway.engines.protocol import Engine
from trio_gateway.errors import model_not_found, unavailable
from trio_gateway.generation import GENERATION_ENDPOINTS, GenerationRequest
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

if TYPE_CHECKING:
    from trio_gateway.tracing import RequestTracing

log = logging.getLogger("trio_gateway")

# How long a changed backend's new definition may take to come up (a worker's hello, an
# upstream's first /models) before it is routed to anyway, the old one drained.
REPLACE_WAIT_S = 10.0
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


def describe_backends(config: GatewayConfig) -> str:
    """What the gateway serves, for the start-up line: the mock and its settings, or each
    remote backend's name, kind and URL (validated: no password in it)."""
    specs = config.backend_specs()
    if not specs:
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
    return ", ".join(describe_spec(spec, config) for spec in specs)


def describe_spec(spec: BackendSpec, config: GatewayConfig) -> str:
    named = "" if spec.from_flags else f"{spec.name}: "
    every = f"resolved every {config.dns_refresh_s:g} s" if spec.discovered else ""
    if spec.is_worker:
        return f"{named}worker {redact(spec.url)}" + (f" ({every})" if every else "")
    slots = spec.capacity or config.max_inflight or config.upstream_max_inflight
    each = f" each, {every}" if every else ""
    return f"{named}upstream {redact(spec.url)} (at most {slots} in flight{each})"


def engine_for_spec(spec: BackendSpec, config: GatewayConfig) -> Engine:
    """The engine for one backend, with its capacity: the one place a backend's slots are
    decided from the settings (a worker says its own in its hello; an upstream takes its
    entry's `capacity`, else `--upstream-max-inflight`); `--max-inflight`, when set,
    overrides the engine's figure in the router, and an entry's `capacity` overrides that.
    The key: the entry's own, else the global `--worker-token` / `--upstream-api-key`.
    TLS (https://, wss://): the `worker_*` or `upstream_*` settings, read here, so a changed
    backend replaced on a reload reads its CA and certificate files again."""
    secure = spec.url.startswith(("https://", "wss://"))
    if spec.is_worker:
        from trio_gateway.engines.ws_client import RemoteWorker

        token = spec.api_key or config.worker_token
        return RemoteWorker(
            spec.url,
            token=token or None,
            window=config.credit_window,
            host_name=spec.host_name or None,
            ssl_context=worker_tls(config).context() if secure else None,
        )
    from trio_gateway.engines.upstream.engine import OpenAIUpstream

    return OpenAIUpstream(
        spec.url,
        api_key=spec.api_key or config.upstream_api_key or None,
        name=None if spec.from_flags and not spec.member_of else spec.name,
        host_name=spec.host_name or None,
        models=spec.backend_models(),
        aliases=spec.alias_map(),
        max_inflight=spec.capacity or config.upstream_max_inflight,
        ssl_context=upstream_tls(config).context() if secure else None,
    )


def upstream_tls(config: GatewayConfig) -> ClientTLS:
    """How https:// upstreams are checked, and the certificate shown to them."""
    return ClientTLS(
        config.upstream_ca_bundle,
        config.upstream_client_cert,
        config.upstream_client_key,
        setting="upstream",
    )


def worker_tls(config: GatewayConfig) -> ClientTLS:
    """How wss:// workers are checked, and the certificate shown to them."""
    return ClientTLS(
        config.worker_ca_bundle,
        config.worker_client_cert,
        config.worker_client_key,
        setting="worker",
    )


def engine_for_url(url: str, config: GatewayConfig) -> Engine:
    """A `--worker` or `POST /admin/workers` URL's engine."""
    return engine_for_spec(specs_from_urls([url])[0], config)


EngineFactory = Callable[[BackendSpec], Engine]


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        engines: list[Engine] | None = None,
        tracing: RequestTracing | None = None,
        *,
        engine_factory: EngineFactory | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """`engines` replace the configured backends (tests); `engine_factory` makes the
        engine of each configured backend (default `engine_for_spec`); `resolver` resolves
        the `dns+` entries' names (default the system's; tests give their own). `tracing`:
        where request spans go; None builds the OTLP exporter when `otlp_endpoint` is set,
        at start (its thread belongs to the running gateway)."""
        self.config = config
        self.tracing = tracing
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
        self._make_engine: EngineFactory = engine_factory or partial(engine_for_spec, config=config)
        self.resolver: Resolver = resolver or SystemResolver()
        # The configured entries by name, `dns+` ones included: what a reload diffs against.
        self._entries: dict[str, BackendSpec] = {}
        # The routed backends they made, by name: a static entry's, a `dns+` entry's members.
        self._configured: dict[str, tuple[BackendSpec, Backend]] = {}
        # The resolution loop of each `dns+` entry (`_watch`), by the entry's name.
        self._watches: dict[str, trio.CancelScope] = {}
        if engines is not None:
            for engine in engines:
                self.router.add(engine)
        elif config.backend_specs():
            for spec in config.backend_specs():
                self._entries[spec.name] = spec
                if spec.discovered:
                    continue  # its members come with its first resolution, at start
                backend = self._backend_for(spec)
                self.router.insert(backend)
                self._configured[spec.name] = (spec, backend)
        else:
            self.router.add(MockEngine.from_settings(config))
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
        up: dict[str, bool] = {}  # a `dns+` entry's members share a label: up if any is
        for backend in self.router.backends:
            label = backend_label(backend.engine, backend.label)
            inflight[label] = inflight.get(label, 0) + backend.inflight
            up[label] = up.get(label, False) or backend.engine.available
        for label, count in inflight.items():
            metrics.backend_inflight.labels(label).set(count)
            metrics.backend_up.labels(label).set(up[label])
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
        if any(not backend.models for backend in self.router.backends):
            raise unavailable("Backends are still starting; retry shortly.")
        raise model_not_found(model)

    def check_context_length(self, request: GenerationRequest) -> None:
        """400 before anything starts when `max_tokens`, or the prompt plus `max_tokens`, is
        over the model's context length. The prompt is judged only when every backend that
        may take the request counts it as the gateway does (`counts_prompts_as_the_mock`)
        and says its length: any other one (an upstream) refuses for itself, its 400
        relayed. Of several lengths the largest counts, as for `max_tokens`. Only the
        completions: `/tokenize` answers how long a text is whatever its length (its answer
        says `max_model_len` for the client to judge), and an embedding's input is the
        engine's to judge."""
        if request.endpoint not in GENERATION_ENDPOINTS:
            return
        model = request.model
        check_max_tokens(request, self.router.context_length(model))
        lengths = []
        for backend in self.router.backends:
            if not backend.serves(model):
                continue
            length = backend.context_lengths.get(model)
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
        if self.tracing is None and self.config.otlp_endpoint:
            from trio_gateway.tracing import RequestTracing  # OpenTelemetry only when asked

            self.tracing = RequestTracing.to_otlp(
                self.config.otlp_endpoint, routing_policy=self.config.routing_policy
            )
        if self.tracing is not None:
            await nursery.start(self.tracing.run)
        self._nursery = nursery
        for spec in self._entries.values():
            if spec.discovered:
                await nursery.start(self._watch, spec)
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
        """Stop routing to a backend and stop its engine; its streams end as `unavailable`.
        A configured backend removed so comes back at the next reload if the file still
        names it: the file is what a reload makes true (a `dns+` member, at the next change
        of its entry's addresses)."""
        backend = self.router.find(name)
        if backend is None:
            return False
        self.router.remove(backend)
        for spec_name, (spec, configured) in list(self._configured.items()):
            if configured is backend:
                del self._configured[spec_name]
                if not spec.member_of:
                    del self._entries[spec_name]
        if backend.scope is not None:
            backend.scope.cancel()
        return True

    # -- the configured backends, and their reload -------------------------------------

    def _backend_for(self, spec: BackendSpec) -> Backend:
        """A configured backend, not routed yet. A `--worker` URL keeps the engine's own
        name (a worker's id once it said hello); a `[[backends]]` entry is its name. A
        `dns+` member is labelled by its entry's name but known by its engine's: its member
        name for an upstream, its worker id for a worker (`discovery/members.py`)."""
        engine = self._make_engine(spec)
        if spec.member_of:
            label: str | None = spec.member_of
        else:
            label = None if spec.from_flags else spec.name
        backend = self.router.backend_for(
            engine,
            label=label,
            capacity=spec.capacity,
            weight=spec.weight,
            # An upstream declares its models itself; a worker's hello is filtered here.
            allowed=frozenset(spec.models) if spec.is_worker and spec.models else None,
            max_model_len=spec.context_lengths(),
        )
        backend.member = bool(spec.member_of)
        return backend

    @property
    def configured(self) -> tuple[BackendSpec, ...]:
        """The entries as configured (a `dns+` entry once, not its members)."""
        return tuple(self._entries.values())

    def members(self, entry: str) -> tuple[Backend, ...]:
        """The routed members of the `dns+` entry named `entry`."""
        return tuple(
            backend for spec, backend in self._configured.values() if spec.member_of == entry
        )

    async def reload_backends(self, specs: Sequence[BackendSpec]) -> BackendsDiff:
        """Make the routed backends what `specs` say, diffed by name, without cutting a
        stream: an added one starts; a removed one takes no new request, finishes those it
        holds, then stops (`_retire`); a changed one is started beside the old, swapped in
        when it is up (or after `REPLACE_WAIT_S`: the file wins), and the old one drained."""
        diff = diff_backends(self.configured, specs)
        if diff.empty:
            return diff
        log.info("reloading backends: %s", diff.summary())
        for spec in diff.removed:
            self._drop_entry(self._entries.pop(spec.name))
        for spec in diff.added:
            await self._add_entry(spec)
        async with trio.open_nursery() as replacing:
            for spec in diff.changed:
                old = self._entries[spec.name]
                self._entries[spec.name] = spec
                if spec.discovered and old.discovered:
                    # The new watch's first resolution replaces each member in place.
                    self._unwatch(spec.name)
                    replacing.start_soon(self._start_watch, spec)
                elif spec.discovered or old.discovered:  # a kind changed: drain, then start
                    self._drop_entry(old)
                    replacing.start_soon(self._add_entry, spec)
                else:
                    replacing.start_soon(self._replace, spec)
        # Keep the file's order, which round_robin and least_inflight's ties follow.
        order = {spec.name: index for index, spec in enumerate(specs)}
        self._entries = dict(
            sorted(self._entries.items(), key=lambda item: order.get(item[0], len(order)))
        )
        self._configured = dict(
            sorted(
                self._configured.items(),
                key=lambda item: order.get(item[1][0].member_of or item[0], len(order)),
            )
        )
        return diff

    async def _add_entry(self, spec: BackendSpec) -> None:
        self._entries[spec.name] = spec
        if spec.discovered:
            await self._start_watch(spec)
        elif not await self._add_backend(spec):
            del self._entries[spec.name]  # not configured: the next reload tries again

    def _drop_entry(self, spec: BackendSpec) -> None:
        """Drain what `spec` made: its backend, or its watch and every member."""
        if not spec.discovered:
            _, backend = self._configured.pop(spec.name)
            self._retire(backend)
            return
        self._unwatch(spec.name)
        for name, (member, backend) in list(self._configured.items()):
            if member.member_of == spec.name:
                del self._configured[name]
                self._retire(backend)

    async def _add_backend(self, spec: BackendSpec) -> bool:
        """Route to a new configured backend and start it; False when it failed to."""
        backend = self._backend_for(spec)
        try:
            self.router.insert(backend)
        except ValueError as error:  # its name is taken (e.g. by POST /admin/workers)
            log.error("backend %s: not added: %s", spec.name, error)
            return False
        self._configured[spec.name] = (spec, backend)
        try:
            started = await self._start(backend)
        except BaseException:  # cancelled while starting: leave nothing half-routed
            started = False
            raise
        finally:
            if not started:
                self._unroute(spec.name, backend)
        return started

    def _unroute(self, name: str, backend: Backend) -> None:
        if backend in self.router.backends:
            self.router.remove(backend)
        if self._configured.get(name, (None, None))[1] is backend:
            del self._configured[name]

    # -- `dns+` entries: their members follow what the name resolves to ----------------

    async def _start_watch(self, spec: BackendSpec) -> None:
        await self.nursery.start(self._watch, spec)

    def _unwatch(self, entry: str) -> None:
        scope = self._watches.pop(entry, None)
        if scope is not None:
            scope.cancel()

    async def _watch(
        self, spec: BackendSpec, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Resolve `spec`'s name every `--dns-refresh-s` and make its members what it
        says (`DnsWatch`), until the entry is reloaded away or the gateway stops."""
        failures = self.metrics.dns_resolution_failures.labels(spec.name)
        watch = DnsWatch(
            spec.name,
            dns_name(spec.url),
            self.resolver,
            partial(self._apply_members, spec),
            refresh_s=self.config.dns_refresh_s,
            on_failure=failures.inc,
        )
        with trio.CancelScope() as scope:
            self._watches[spec.name] = scope
            try:
                await watch.run(task_status=task_status)
            finally:
                if self._watches.get(spec.name) is scope:
                    del self._watches[spec.name]

    async def _apply_members(self, entry: BackendSpec, addresses: frozenset[str]) -> None:
        """Make `entry`'s members one per address: an address that appeared is added, one
        that vanished drained (its streams finish, then its engine stops, as a backend a
        reload removed), one whose entry changed replaced in place."""
        current = tuple(
            spec for spec, _ in self._configured.values() if spec.member_of == entry.name
        )
        diff = diff_backends(current, member_specs(entry, addresses))
        for spec in diff.removed:
            _, backend = self._configured.pop(spec.name)
            self._retire(backend)
        for spec in diff.added:
            await self._add_backend(spec)
        async with trio.open_nursery() as replacing:
            for spec in diff.changed:
                replacing.start_soon(self._replace, spec)

    async def reload(self, load: Callable[[], GatewayConfig]) -> BackendsDiff | None:
        """SIGHUP's work: read the settings again (`load`: the same file, environment and
        flags as at start) and apply their backends. A file that does not load is logged,
        one line naming the key, and changes nothing (None). Only the backends reload; a
        change to any other setting is said in the log and waits for a restart. A gateway
        that is shutting down does not reload: its backends are draining for good."""
        if not self.shutdown.accepting:
            log.warning("reload: ignored, the gateway is shutting down")
            return None
        try:
            config = load()
        except ConfigError as error:
            log.error("reload: %s; the running backends are kept", error)
            return None
        if dataclasses.replace(config, backends=self.config.backends) != self.config:
            changed = [
                f.name
                for f in dataclasses.fields(config)
                if f.name != "backends" and getattr(config, f.name) != getattr(self.config, f.name)
            ]
            log.warning(
                "reload: only backends reload; %s changed and take effect at a restart",
                ", ".join(changed),
            )
        diff = await self.reload_backends(config.backend_specs())
        if diff.empty:
            log.info("reload: the backends are unchanged")
        return diff

    async def _replace(self, spec: BackendSpec) -> None:
        _, old = self._configured[spec.name]
        new = self._backend_for(spec)
        if not await self._start(new):
            return  # the old definition serves on; the next reload tries again
        if not new.engine.available:
            try:
                with trio.move_on_after(REPLACE_WAIT_S):
                    await new.up.wait()
            except BaseException:  # cancelled (its watch reloaded away): the old one serves on
                self._retire(new)
                raise
            if not new.engine.available:
                log.warning(
                    "backend %s: the new definition is not up after %g s; routing to it anyway",
                    spec.name,
                    REPLACE_WAIT_S,
                )
        if old in self.router.backends:
            self.router.replace(old, new)
        else:  # removed meanwhile by DELETE /admin/workers
            self.router.insert(new)
        self._configured[spec.name] = (spec, new)
        self._retire(old)

    async def _start(self, backend: Backend) -> bool:
        """Start a reloaded backend's engine; one that fails to start is logged, not fatal:
        the gateway keeps serving with the others."""
        try:
            await self.nursery.start(self._run_backend, backend)
        except Exception:
            log.exception("reload: backend %s failed to start", backend.name)
            return False
        return True

    def _retire(self, backend: Backend) -> None:
        """Out of the routing table now; its engine stops once its last request ended."""
        if backend in self.router.backends:
            self.router.remove(backend)
        elif not backend.retired:  # started, never routed
            backend.retired = True
            if backend.inflight == 0:
                backend.idle.set()
        self.nursery.start_soon(self._stop_when_idle, backend)

    async def _stop_when_idle(self, backend: Backend) -> None:
        if backend.inflight:
            log.info("backend %s: draining %d requests", backend.name, backend.inflight)
        await backend.idle.wait()
        if backend.scope is not None:
            backend.scope.cancel()
        log.info("backend %s: stopped", backend.name)

    async def _run_backend(
        self, backend: Backend, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # A worker's fresh hello (an upstream answering again): capacity for the queue, and
        # an open breaker goes half-open at once rather than after its cooldown.
        backend.engine.on_available = partial(self.router.backend_reconnected, backend)
        with trio.CancelScope() as backend.scope:
            if backend.retired:  # drained before it even started
                task_status.started()
                return
            await backend.engine.run(task_status=task_status)
