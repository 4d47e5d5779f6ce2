"""`trio-gateway serve`'s settings: one frozen dataclass, each field a flag, a variable and a
key of the TOML file (`config/sources.py` fills it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from trio_gateway.backend_urls import (
    CONFIGURED_SCHEMES,
    BadURL,
    check_backend_url,
    check_session_store_url,
)
from trio_gateway.backends_config import (
    BackendsError,
    BackendSpec,
    check_unique,
    specs_from_urls,
)
from trio_gateway.config.settings import (
    BODY_READ_S_PER_MIB,
    MIB,
    ConfigError,
    check_logging,
    check_tls_settings,
    setting,
)
from trio_gateway.engines.upstream.engine import UPSTREAM_MAX_INFLIGHT
from trio_gateway.router.policies import POLICY_NAMES, CacheAwareOptions

_CACHE_AWARE = CacheAwareOptions()  # the defaults of the cache_aware_* settings


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """`trio-gateway serve`. Each field's help is what `serve --help` prints beside it."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(8000, "port to listen on (0: any free port, one process only)")
    model: str = setting("mock", "the model name the in-process mock engine serves")
    mock_ttft_ms: float = setting(5.0, "mock engine: prefill time before the first token")
    mock_itl_ms: float = setting(10.0, "mock engine: time of one scheduler step (one token)")
    mock_max_num_seqs: int = setting(256, "mock engine: sequences per step; the rest queue")
    mock_tokens: int = setting(100, "mock engine: answer length when max_tokens is not given")
    max_model_len: int = setting(
        32768, "the mock's context length: prompt + max_tokens above it is a 400"
    )
    mock_prefix_block_tokens: int = setting(
        16, "tokens per block of the mock's prefix cache (vLLM's block size)"
    )
    mock_prefix_cache_blocks: int = setting(
        8192, "blocks the mock's prefix cache holds, LRU; 0 disables it"
    )
    mock_prefill_ms_per_1k_tokens: float = setting(
        0.0, "mock prefill time per 1000 prompt tokens not in its prefix cache"
    )
    inactivity_timeout_s: float = setting(
        60.0, "a stream silent this long is cancelled as response_timeout (504); 0: never"
    )
    # An OpenAI upstream says nothing until a unary answer is done, so it is timed whole.
    unary_timeout_s: float = setting(
        600.0, "a unary request an upstream answers whole may take this long; 0: never"
    )
    stream_buffer: int = setting(64, "chunks buffered per request between engine and writer")
    max_body_bytes: int = setting(4 * MIB, "larger request bodies get 413")
    # The deadline grows with the body (an uplink of at least 0.5 MiB/s for big bodies);
    # headers are hypercorn's: unfinished after keep_alive_timeout_s, the connection closes.
    body_read_timeout_s: float = setting(
        5.0, "a body must arrive within the larger of this and 2 s per MiB, else 408; 0: never"
    )
    drain_timeout_s: float = setting(
        30.0, "after SIGTERM, in-flight requests get this long before they are cut"
    )
    drain_delay_s: float = setting(
        0.0, "after SIGTERM, keep taking requests this long while /ready already says 503"
    )
    api_keys: tuple[str, ...] = setting(
        (), "a key accepted on /v1/* as a bearer token; none: open", secret=True, flag="--api-key"
    )
    api_keys_file: str = setting("", "a file of accepted API keys, one per line")
    admin_token: str = setting(
        "", "bearer token for /admin/*; none: loopback clients only", secret=True
    )
    workers: tuple[str, ...] = setting(
        (),
        "a backend: ws(s)://HOST:PORT (a worker) or http(s)://HOST:PORT/v1 (an OpenAI "
        "server); dns+ws(s)://NAME:PORT, dns+http(s)://NAME:PORT/v1: every address NAME "
        "resolves to, re-resolved every --dns-refresh-s; none: the in-process mock",
        flag="--worker",
    )
    # The config file's `[[backends]]` (backends_config.py): no flag, no environment variable.
    backends: tuple[BackendSpec, ...] = field(
        default=(),
        metadata={"help": "named backends, the file's [[backends]] tables", "file_only": True},
    )
    worker_token: str = setting("", "the token workers expect in the handshake", secret=True)
    upstream_api_key: str = setting(
        "", "bearer token sent to OpenAI-compatible upstreams", secret=True
    )
    upstream_ca_bundle: str = setting(
        "", "PEM file of the CAs trusted for https:// upstreams; none: the system's store"
    )
    upstream_client_cert: str = setting(
        "", "PEM certificate the gateway presents to https:// upstreams that require one"
    )
    upstream_client_key: str = setting(
        "", "the private key of --upstream-client-cert (none: it is in the certificate's file)"
    )
    worker_ca_bundle: str = setting(
        "", "PEM file of the CAs trusted for wss:// workers; none: the system's store"
    )
    worker_client_cert: str = setting(
        "", "PEM certificate the gateway presents to wss:// workers that require one"
    )
    worker_client_key: str = setting(
        "", "the private key of --worker-client-cert (none: it is in the certificate's file)"
    )
    credit_window: int = setting(32, "chunks a worker may send a request ahead of the client")
    session_timeout_s: float = setting(300.0, "idle seconds before a session closes")
    session_affinity: str = setting(
        "hard", "a session whose worker is gone: hard answers 503 session_lost, soft re-homes it"
    )
    session_store: str = setting(
        "", "redis://HOST:PORT/DB: sessions (and cache_aware's index) shared by replicas"
    )
    routing_policy: str = setting(
        "power_of_two", f"how a backend is chosen: {', '.join(POLICY_NAMES)}"
    )
    cache_aware_threshold: float = setting(
        _CACHE_AWARE.threshold, "cache_aware: a match above this share of the prompt's blocks wins"
    )
    cache_aware_balance_abs: int = setting(
        _CACHE_AWARE.balance_abs,
        "cache_aware: least loaded wins past this in-flight gap (and the ratio)",
    )
    cache_aware_balance_rel: float = setting(
        _CACHE_AWARE.balance_rel,
        "cache_aware: least loaded wins past this in-flight ratio (and the gap)",
    )
    cache_aware_load_factor: float = setting(
        _CACHE_AWARE.load_factor,
        "cache_aware: a backend takes a request by affinity only while its in-flight stays "
        "within this factor of the mean (bounded load; 0: off)",
    )
    cache_aware_block_chars: int = setting(
        _CACHE_AWARE.block_chars, "cache_aware: characters per hashed prompt block"
    )
    cache_aware_capacity_blocks: int = setting(
        _CACHE_AWARE.capacity_blocks,
        "cache_aware: blocks remembered per backend, least recent dropped",
    )
    cache_aware_ttl_s: float = setting(
        _CACHE_AWARE.ttl_s, "cache_aware: seconds a block is remembered after its last request"
    )
    max_inflight: int = setting(
        0,
        "requests in flight per backend, every kind; 0: each backend's own (a worker's hello, "
        "--upstream-max-inflight)",
    )
    upstream_max_inflight: int = setting(
        UPSTREAM_MAX_INFLIGHT,
        "requests in flight per OpenAI-compatible upstream (set its --max-num-seqs); "
        "more wait in the gateway's queue",
    )
    dns_refresh_s: float = setting(
        5.0,
        "how often a dns+ backend's name is resolved again (Envoy's STRICT_DNS default): "
        "addresses that appear are added, those that vanish drained",
    )
    queue_size: int = setting(1024, "requests waiting when every backend is full; then 429")
    queue_timeout_s: float = setting(30.0, "longest wait in that queue before a 429")
    breaker_threshold: int = setting(5, "consecutive backend failures that open its breaker")
    breaker_cooldown_s: float = setting(10.0, "how long an open breaker waits before a probe")
    # hypercorn's, when `serve` runs it; its graceful timeout only covers what is left once
    # the gateway's own drain is over.
    keep_alive_timeout_s: float = setting(
        5.0, "idle keep-alive connections (and unfinished headers) close after this"
    )
    graceful_timeout_s: float = setting(5.0, "hypercorn's last wait once the drain is over")
    backlog: int = setting(2048, "the listening socket's backlog")
    certfile: str = setting("", "PEM certificate (chain) to serve HTTPS with; none: plain HTTP")
    keyfile: str = setting("", "the private key of --certfile")
    keyfile_password: str = setting("", "the password of an encrypted --keyfile", secret=True)
    ca_certs: str = setting(
        "", "PEM file of CAs: with it, clients must present a certificate they signed (mTLS)"
    )
    # Each process runs the whole gateway on its own SO_REUSEPORT socket.
    processes: int = setting(1, "gateway processes sharing the port; metrics summed across")
    reuse_port: bool = setting(False, "bind with SO_REUSEPORT (set for each of --processes)")
    supervisor_pid: int = setting(
        0, "internal, set by --processes: drain and stop once that process is gone"
    )
    log_level: str = setting("info", "debug, info, warning, error or critical")
    log_format: str = setting("text", "text, or json: one object per line")
    log_prompts: bool = setting(False, "put prompt and completion text in the request's end line")
    otlp_endpoint: str = setting(
        "",
        "an OTLP/HTTP collector (http://HOST:4318) to export a span per request to; none: "
        "no tracing (a client's traceparent is still passed on)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}: must be a finite number, got {value}")
        positive = (
            "mock_max_num_seqs",
            "max_model_len",
            "mock_prefix_block_tokens",
            "stream_buffer",
            "backlog",
            "credit_window",
            "breaker_threshold",
            "processes",
            "cache_aware_block_chars",
            "cache_aware_capacity_blocks",
            "upstream_max_inflight",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be between 0 and 65535, got {self.port}")
        non_negative = (
            "mock_ttft_ms",
            "mock_itl_ms",
            "mock_tokens",
            "mock_prefix_cache_blocks",
            "mock_prefill_ms_per_1k_tokens",
            "inactivity_timeout_s",
            "unary_timeout_s",
            "max_body_bytes",
            "body_read_timeout_s",
            "keep_alive_timeout_s",
            "graceful_timeout_s",
            "drain_timeout_s",
            "drain_delay_s",
            "max_inflight",
            "queue_size",
            "queue_timeout_s",
            "breaker_cooldown_s",
            "cache_aware_balance_abs",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {getattr(self, name)}")
        if self.dns_refresh_s <= 0:
            raise ConfigError(f"dns_refresh_s: must be above 0, got {self.dns_refresh_s}")
        if self.mock_itl_ms == 0:
            raise ConfigError("mock_itl_ms: must be above 0 (it is the engine's step time)")
        if not self.model:
            raise ConfigError("model: must not be empty")
        check_logging(self.log_level, self.log_format)
        if self.session_affinity not in ("hard", "soft"):
            raise ConfigError(
                f"session_affinity: expected hard or soft, got {self.session_affinity!r}"
            )
        if self.session_store:
            try:
                check_session_store_url(self.session_store)
            except BadURL as error:
                raise ConfigError(f"session_store: {error}") from None
        if self.session_timeout_s <= 0:
            raise ConfigError(f"session_timeout_s: must be above 0, got {self.session_timeout_s}")
        if self.routing_policy not in POLICY_NAMES:
            raise ConfigError(
                f"routing_policy: unknown {self.routing_policy!r}; "
                f"choose one of {', '.join(POLICY_NAMES)}"
            )
        if not 0 <= self.cache_aware_threshold <= 1:
            raise ConfigError(
                f"cache_aware_threshold: must be between 0 and 1, got {self.cache_aware_threshold}"
            )
        if self.cache_aware_balance_rel < 1:
            raise ConfigError(
                f"cache_aware_balance_rel: must be at least 1, got {self.cache_aware_balance_rel}"
            )
        if self.cache_aware_load_factor != 0 and self.cache_aware_load_factor < 1:
            raise ConfigError(
                "cache_aware_load_factor: must be 0 (off) or at least 1, "
                f"got {self.cache_aware_load_factor}"
            )
        if self.cache_aware_ttl_s <= 0:
            raise ConfigError(f"cache_aware_ttl_s: must be above 0, got {self.cache_aware_ttl_s}")
        if self.processes > 1 and self.port == 0:
            raise ConfigError("processes: several processes need a fixed port, not port 0")
        for url in self.workers:
            try:
                check_backend_url(url, CONFIGURED_SCHEMES)
            except BadURL as error:
                raise ConfigError(f"workers: {error}") from None
        check_tls_settings(self)
        for kind in ("upstream", "worker"):
            if getattr(self, f"{kind}_client_key") and not getattr(self, f"{kind}_client_cert"):
                raise ConfigError(f"{kind}_client_key: given without {kind}_client_cert")
        if self.otlp_endpoint:
            parts = urlsplit(self.otlp_endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"otlp_endpoint: expected http(s)://HOST[:PORT][/PATH], "
                    f"got {self.otlp_endpoint!r}"
                )
        try:
            check_unique(self.backend_specs())
        except BackendsError as error:
            raise ConfigError(str(error)) from None

    def backend_specs(self) -> tuple[BackendSpec, ...]:
        """Every remote backend: the file's `[[backends]]`, then `--worker` URLs (named by
        their URL); none: the in-process mock."""
        return self.backends + specs_from_urls(self.workers)

    def accepted_api_keys(self) -> frozenset[str]:
        """`api_keys` and the lines of `api_keys_file`; empty means no key is required."""
        keys = set(self.api_keys)
        if self.api_keys_file:
            try:
                text = Path(self.api_keys_file).read_text()
            except OSError as error:
                raise ConfigError(
                    f"api_keys_file: cannot read {self.api_keys_file}: {error.strerror}"
                ) from None
            keys.update(line.strip() for line in text.splitlines())
        keys.discard("")
        return frozenset(keys)

    def cache_aware(self) -> CacheAwareOptions:
        """The `cache_aware_*` settings, as the policy takes them."""
        return CacheAwareOptions(
            threshold=self.cache_aware_threshold,
            balance_abs=self.cache_aware_balance_abs,
            balance_rel=self.cache_aware_balance_rel,
            load_factor=self.cache_aware_load_factor,
            block_chars=self.cache_aware_block_chars,
            capacity_blocks=self.cache_aware_capacity_blocks,
            ttl_s=self.cache_aware_ttl_s,
        )

    @property
    def inactivity_timeout(self) -> float:
        """Seconds a request may go without a chunk; 0 in the setting means never."""
        return self.inactivity_timeout_s if self.inactivity_timeout_s > 0 else float("inf")

    @property
    def unary_timeout(self) -> float:
        """Seconds a unary request answered whole may take; 0 in the setting means never."""
        return self.unary_timeout_s if self.unary_timeout_s > 0 else float("inf")

    def body_read_timeout(self, declared: int | None) -> float:
        """Seconds to read a body of `declared` bytes (None: no Content-Length), see
        `body_read_timeout_s`; never more than for `max_body_bytes`. inf when 0."""
        if self.body_read_timeout_s <= 0:
            return float("inf")
        size = self.max_body_bytes if declared is None else min(declared, self.max_body_bytes)
        return max(self.body_read_timeout_s, BODY_READ_S_PER_MIB * size / MIB)
