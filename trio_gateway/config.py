"""Settings: one dataclass, filled from defaults, a TOML file, `TRIO_GATEWAY_*` and flags.

Each field is a flag (`mock_itl_ms` → `--mock-itl-ms`) and an environment variable
(`TRIO_GATEWAY_MOCK_ITL_MS`); later sources win: defaults < file < environment < flags.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trio_gateway.backend_urls import (
    UPSTREAM_SCHEMES,
    BadURL,
    check_backend_url,
    check_session_store_url,
)
from trio_gateway.backends_config import (
    BackendsError,
    BackendSpec,
    check_unique,
    parse_backends,
    resolve_keys,
    specs_from_urls,
)
from trio_gateway.engines.upstream.engine import UPSTREAM_MAX_INFLIGHT
from trio_gateway.router.policies import POLICY_NAMES, CacheAwareOptions

_Default = TypeVar("_Default")
ENV_PREFIX = "TRIO_GATEWAY_"
WORKER_ENV_PREFIX = "TRIO_GATEWAY_WORKER_"
SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")
MIB = 1024 * 1024
BODY_READ_S_PER_MIB = 2.0  # how `body_read_timeout_s` grows with a body's size
_CACHE_AWARE = CacheAwareOptions()  # the defaults of the cache_aware_* settings


def setting(default: _Default, help: str, *, secret: bool = False, flag: str = "") -> _Default:
    """A field with its `--help` text; a secret is left out of the repr (and so of logs)."""
    metadata = {"help": help, "flag": flag} if flag else {"help": help}
    return field(default=default, repr=not secret, metadata=metadata)


class ConfigError(ValueError):
    """A bad setting; its message names the key and is meant to be printed as is."""


def _check_logging(level: str, log_format: str) -> None:
    if level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level: unknown level {level!r}")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: expected text or json, got {log_format!r}")


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
        "server); none: the in-process mock",
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
        if self.mock_itl_ms == 0:
            raise ConfigError("mock_itl_ms: must be above 0 (it is the engine's step time)")
        if not self.model:
            raise ConfigError("model: must not be empty")
        _check_logging(self.log_level, self.log_format)
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
                check_backend_url(url)
            except BadURL as error:
                raise ConfigError(f"workers: {error}") from None
        _check_tls_settings(self)
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


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """`trio-gateway worker`: an engine behind the WebSocket request plane. A field with no
    help of its own means what `GatewayConfig`'s field of that name means (the mock's)."""

    host: str = setting("127.0.0.1", "address to listen on for gateways' WebSockets")
    port: int = setting(9001, "port of the WebSocket request plane")
    metrics_port: int = setting(9101, "port of /metrics, /live and /ready")
    worker_id: str = setting("", "the id this worker gives in its hello; default HOST:PORT")
    token: str = setting("", "the token a gateway must send in the handshake", secret=True)
    upstream: str = setting(
        "",
        "an OpenAI-compatible engine on this node (http://HOST:PORT/v1) to serve instead of "
        "the mock; its models come from its /v1/models",
    )
    upstream_api_key: str = setting("", "bearer token sent to --upstream", secret=True)
    upstream_ca_bundle: str = setting(
        "", "PEM file of the CAs trusted for an https:// --upstream; none: the system's store"
    )
    upstream_client_cert: str = setting(
        "", "PEM certificate presented to an https:// --upstream that requires one"
    )
    upstream_client_key: str = setting(
        "", "the private key of --upstream-client-cert (none: it is in the certificate's file)"
    )
    certfile: str = setting(
        "", "PEM certificate (chain) to serve the request plane as wss:// with; none: ws://"
    )
    keyfile: str = setting("", "the private key of --certfile")
    keyfile_password: str = setting("", "the password of an encrypted --keyfile", secret=True)
    ca_certs: str = setting(
        "", "PEM file of CAs: with it, gateways must present a certificate they signed (mTLS)"
    )
    model: str = setting("mock", "")
    mock_ttft_ms: float = setting(5.0, "")
    mock_itl_ms: float = setting(10.0, "")
    mock_max_num_seqs: int = setting(256, "")
    mock_tokens: int = setting(100, "")
    max_model_len: int = setting(32768, "")
    mock_prefix_block_tokens: int = setting(16, "")
    mock_prefix_cache_blocks: int = setting(8192, "")
    mock_prefill_ms_per_1k_tokens: float = setting(0.0, "")
    max_inflight: int = setting(1024, "requests this worker runs at once (told in its hello)")
    drain_timeout_s: float = setting(
        30.0, "after SIGTERM, in-flight requests get this long before they are cut"
    )
    log_level: str = setting("info", "debug, info, warning, error or critical")
    log_format: str = setting("text", "text, or json: one object per line")

    def __post_init__(self) -> None:
        _check_logging(self.log_level, self.log_format)
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}: must be between 0 and 65535")
        for name in ("mock_itl_ms", "max_inflight", "mock_max_num_seqs"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: must be above 0, got {value}")
        non_negative = (
            "mock_ttft_ms",
            "mock_tokens",
            "mock_prefix_cache_blocks",
            "mock_prefill_ms_per_1k_tokens",
            "drain_timeout_s",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: must not be negative, got {value}")
        for name in ("max_model_len", "mock_prefix_block_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.upstream:
            try:
                check_backend_url(self.upstream, UPSTREAM_SCHEMES)
            except BadURL as error:
                raise ConfigError(f"upstream: {error}") from None
        _check_tls_settings(self)
        if self.upstream_client_key and not self.upstream_client_cert:
            raise ConfigError("upstream_client_key: given without upstream_client_cert")


def _check_tls_settings(config: GatewayConfig | WorkerConfig) -> None:
    """The listener's TLS files come as a pair; the others need that pair. (Whether the files
    load is checked where they are used, at start-up: `tls.py`, hypercorn.)"""
    if bool(config.certfile) != bool(config.keyfile):
        given, missing = ("certfile", "keyfile") if config.certfile else ("keyfile", "certfile")
        raise ConfigError(f"{given}: given without {missing} (TLS needs both)")
    for name in ("ca_certs", "keyfile_password"):
        if getattr(config, name) and not config.certfile:
            raise ConfigError(f"{name}: only with certfile and keyfile (TLS)")


def _convert(name: str, kind: type, raw: Any) -> Any:
    if kind is tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
        raise ConfigError(f"{name}: expected a list of strings, got {raw!r}")
    if isinstance(raw, kind) and not (kind is not bool and isinstance(raw, bool)):
        return raw
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return kind(text)
        except ValueError:
            pass
    raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}


Settings = TypeVar("Settings", "GatewayConfig", "WorkerConfig")


def _field_types(kind: type[Any]) -> dict[str, type]:
    """The settings given by flag and environment (not the file's `[[backends]]`)."""
    return {f.name: _TYPES[str(f.type)] for f in fields(kind) if not _file_only(f)}


def _file_only(f: Any) -> bool:
    return bool(f.metadata.get("file_only"))


def _env_prefix(kind: type[Any]) -> str:
    return WORKER_ENV_PREFIX if kind is WorkerConfig else ENV_PREFIX


def load_config(
    kind: type[Settings] | None = None,
    *,
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources; raise `ConfigError` with the offending key on a bad value."""
    settings: type[Any] = GatewayConfig if kind is None else kind
    prefix = _env_prefix(settings)
    types = _field_types(settings)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = file or environ.get(prefix + "CONFIG") or None
    if file:
        try:
            document = tomllib.loads(Path(file).read_text())
        except OSError as error:
            raise ConfigError(f"config: cannot read {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config: {file} is not valid TOML: {error}") from None
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name == "backends" and settings is GatewayConfig:
                try:
                    values[name] = resolve_keys(parse_backends(raw), environ, _read_text)
                except BackendsError as error:
                    raise ConfigError(str(error)) from None
                continue
            if name not in types:
                raise ConfigError(f"{key}: unknown setting in {file}")
            values[name] = _convert(key, types[name], raw)
    for name, field_type in types.items():
        env_name = prefix + name.upper()
        if env_name in environ:
            if environ[env_name].startswith(SERVICE_LINK_SCHEMES):
                # Kubernetes injects TRIO_GATEWAY_PORT=tcp://IP:PORT for a Service named
                # trio-gateway (docker --link did the same): not a setting of ours.
                continue
            values[name] = _convert(env_name, field_type, environ[env_name])
    for name, raw in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"{name}: unknown setting")
        if raw is not None:
            values[name] = _convert("--" + name.replace("_", "-"), types[name], raw)
    config: Settings = settings(**values)
    return config


def _read_text(path: str) -> str:
    return Path(path).read_text()


def setting_help(kind: type[Any], name: str) -> str:
    """What a setting is for; a worker's mock settings say what the gateway's say."""
    help_text: str = next(f for f in fields(kind) if f.name == name).metadata["help"]
    if not help_text and kind is not GatewayConfig:
        return setting_help(GatewayConfig, name)
    return help_text


def add_config_flags(parser: argparse.ArgumentParser, kind: type[Any] | None = None) -> None:
    """One flag per setting; unset flags stay None so lower-priority sources show through."""
    settings: type[Any] = GatewayConfig if kind is None else kind
    prefix = _env_prefix(settings)
    parser.add_argument("--config", help=f"TOML file of settings (also {prefix}CONFIG)")
    defaults = settings()
    for f in fields(settings):
        if _file_only(f):
            continue
        repeatable = _TYPES[str(f.type)] is tuple
        default = getattr(defaults, f.name)
        parser.add_argument(
            f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            default=None,
            action="append" if repeatable else "store",
            metavar=(f.name[:-1] if repeatable else str(f.type)).upper(),
            help=setting_help(settings, f.name)
            + (" (repeatable)" if repeatable else "")
            + f". Default {default!r}; env {prefix}{f.name.upper()}"
            + (" (comma-separated)" if repeatable else ""),
        )


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    kind: type[Settings] | None = None,
) -> Settings:
    settings: type[Any] = GatewayConfig if kind is None else kind
    overrides = {f.name: getattr(args, f.name, None) for f in fields(settings) if not _file_only(f)}
    config: Settings = load_config(settings, file=args.config, environ=environ, overrides=overrides)
    return config
