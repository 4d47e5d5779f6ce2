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

from trio_gateway.backend_urls import (
    UPSTREAM_SCHEMES,
    BadURL,
    check_backend_url,
    check_session_store_url,
)
from trio_gateway.router.policies import POLICY_NAMES, CacheAwareOptions

ENV_PREFIX = "TRIO_GATEWAY_"
WORKER_ENV_PREFIX = "TRIO_GATEWAY_WORKER_"
SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")
MIB = 1024 * 1024
BODY_READ_S_PER_MIB = 2.0  # how `body_read_timeout_s` grows with a body's size
_CACHE_AWARE = CacheAwareOptions()  # the defaults of the cache_aware_* settings


class ConfigError(ValueError):
    """A bad setting; its message names the key and is meant to be printed as is."""


def _check_logging(level: str, log_format: str) -> None:
    if level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level: unknown level {level!r}")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: expected text or json, got {log_format!r}")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "mock"
    # The in-process mock engine (continuous batching, DESIGN §3).
    mock_ttft_ms: float = 5.0
    mock_itl_ms: float = 10.0
    mock_max_num_seqs: int = 256
    mock_tokens: int = 100
    max_model_len: int = 32768  # the mock's context length (upstreams report their own)
    mock_prefix_block_tokens: int = field(
        default=16,
        metadata={"help": "tokens per block of the mock's prefix cache (vLLM's block size)"},
    )
    mock_prefix_cache_blocks: int = field(
        default=8192,
        metadata={"help": "blocks the mock's prefix cache holds, LRU; 0 disables it"},
    )
    mock_prefill_ms_per_1k_tokens: float = field(
        default=0.0,
        metadata={"help": "mock prefill time per 1000 prompt tokens not in its prefix cache"},
    )
    # Request lifecycle.
    inactivity_timeout_s: float = 60.0
    # A unary request to an engine that answers it whole (an OpenAI upstream says nothing
    # until it is done) is timed as a whole instead; 0 means never.
    unary_timeout_s: float = 600.0
    stream_buffer: int = 64
    max_body_bytes: int = 4 * 1024 * 1024
    # A request body must arrive whole within max(body_read_timeout_s, 2 s per MiB of its
    # Content-Length, or of max_body_bytes when it has none (chunked)): else 408 and the
    # connection closed. 5 s and 2 s/MiB (an uplink of at least 0.5 MiB/s for big bodies)
    # by default; 0 means never. A Content-Length over max_body_bytes is 413 before reading.
    # Headers are hypercorn's: unfinished after keep_alive_timeout_s, the connection closes.
    body_read_timeout_s: float = 5.0
    # Shutdown (DESIGN §5): in-flight requests get this long to finish after SIGTERM.
    drain_timeout_s: float = 30.0
    # After SIGTERM, keep taking new requests this long while /ready already says 503, so
    # load balancers stop sending before anything is refused.
    drain_delay_s: float = 0.0
    # Security: keys accepted on /v1/* (none: open), and the token of /admin/* (none:
    # loopback clients only).
    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata={"flag": "--api-key"})
    api_keys_file: str = ""
    admin_token: str = field(default="", repr=False)
    # Remote engines: `ws://` workers and `http(s)://.../v1` OpenAI-compatible upstreams.
    # None given: the in-process mock engine serves `model`.
    workers: tuple[str, ...] = field(default=(), metadata={"flag": "--worker"})
    worker_token: str = field(default="", repr=False)
    upstream_api_key: str = field(default="", repr=False)
    credit_window: int = 32
    # Sessions: idle time before a session closes; "hard" affinity answers 503 session_lost
    # when a session's worker is gone, "soft" re-homes the session on another worker.
    session_timeout_s: float = 300.0
    session_affinity: str = "hard"
    session_store: str = ""  # "": in memory; redis://HOST:PORT/DB: shared by replicas
    # Routing and admission.
    routing_policy: str = "power_of_two"
    cache_aware_threshold: float = field(
        default=_CACHE_AWARE.threshold,
        metadata={"help": "cache_aware: a match above this share of the prompt's blocks wins"},
    )
    cache_aware_balance_abs: int = field(
        default=_CACHE_AWARE.balance_abs,
        metadata={"help": "cache_aware: least loaded wins past this in-flight gap (and the ratio)"},
    )
    cache_aware_balance_rel: float = field(
        default=_CACHE_AWARE.balance_rel,
        metadata={"help": "cache_aware: least loaded wins past this in-flight ratio (and the gap)"},
    )
    cache_aware_load_factor: float = field(
        default=_CACHE_AWARE.load_factor,
        metadata={
            "help": "cache_aware: a backend takes a request by affinity only while its in-flight"
            " stays within this factor of the mean (bounded load; 0: off)"
        },
    )
    cache_aware_block_chars: int = field(
        default=_CACHE_AWARE.block_chars,
        metadata={"help": "cache_aware: characters per hashed prompt block"},
    )
    cache_aware_capacity_blocks: int = field(
        default=_CACHE_AWARE.capacity_blocks,
        metadata={"help": "cache_aware: blocks remembered per backend, least recent dropped"},
    )
    cache_aware_ttl_s: float = field(
        default=_CACHE_AWARE.ttl_s,
        metadata={"help": "cache_aware: seconds a block is remembered after its last request"},
    )
    max_inflight: int = 0  # per backend; 0: the backend's own (a worker's hello)
    queue_size: int = 1024
    queue_timeout_s: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 10.0
    # hypercorn, when started by `trio-gateway serve`. Its graceful timeout only covers
    # what is left once the gateway's own drain is over.
    keep_alive_timeout_s: float = 5.0
    graceful_timeout_s: float = 5.0
    backlog: int = 2048
    # Gateway processes sharing the port (each its own socket, SO_REUSEPORT: the kernel
    # spreads connections). Each runs the whole gateway; metrics are summed across them.
    processes: int = 1
    reuse_port: bool = False  # bind with SO_REUSEPORT (set for each of `processes`)
    # Set by `processes` for its children: drain and stop once that process is gone.
    supervisor_pid: int = 0
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line
    log_prompts: bool = False  # put prompt and completion text in the end-of-request line

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
    """`trio-gateway worker`: an engine behind the WebSocket request plane."""

    host: str = "127.0.0.1"
    port: int = 9001
    metrics_port: int = 9101
    worker_id: str = ""  # default: host:port
    token: str = field(default="", repr=False)
    # An OpenAI-compatible engine on this node (vLLM, SGLang, llama.cpp: http://HOST:PORT/v1)
    # to serve instead of the mock; its models are read from its /v1/models.
    upstream: str = ""
    upstream_api_key: str = field(default="", repr=False)
    model: str = "mock"
    mock_ttft_ms: float = 5.0
    mock_itl_ms: float = 10.0
    mock_max_num_seqs: int = 256
    mock_tokens: int = 100
    max_model_len: int = 32768
    mock_prefix_block_tokens: int = field(
        default=16,
        metadata={"help": "tokens per block of the mock's prefix cache (vLLM's block size)"},
    )
    mock_prefix_cache_blocks: int = field(
        default=8192,
        metadata={"help": "blocks the mock's prefix cache holds, LRU; 0 disables it"},
    )
    mock_prefill_ms_per_1k_tokens: float = field(
        default=0.0,
        metadata={"help": "mock prefill time per 1000 prompt tokens not in its prefix cache"},
    )
    max_inflight: int = 1024
    load_interval_s: float = 1.0
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        _check_logging(self.log_level, self.log_format)
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}: must be between 0 and 65535")
        for name in ("mock_itl_ms", "max_inflight", "mock_max_num_seqs", "load_interval_s"):
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
    return {f.name: _TYPES[str(f.type)] for f in fields(kind)}


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


def add_config_flags(parser: argparse.ArgumentParser, kind: type[Any] | None = None) -> None:
    """One flag per setting; unset flags stay None so lower-priority sources show through."""
    settings: type[Any] = GatewayConfig if kind is None else kind
    prefix = _env_prefix(settings)
    parser.add_argument("--config", help=f"TOML file of settings (also {prefix}CONFIG)")
    defaults = settings()
    for f in fields(settings):
        repeatable = _TYPES[str(f.type)] is tuple
        default = getattr(defaults, f.name)
        parser.add_argument(
            f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            default=None,
            action="append" if repeatable else "store",
            metavar=(f.name[:-1] if repeatable else str(f.type)).upper(),
            help=("repeatable; " if repeatable else "")
            + f"default {default!r}; env {prefix}{f.name.upper()}"
            + (" (comma-separated)" if repeatable else ""),
        )


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    kind: type[Settings] | None = None,
) -> Settings:
    settings: type[Any] = GatewayConfig if kind is None else kind
    overrides = {f.name: getattr(args, f.name, None) for f in fields(settings)}
    config: Settings = load_config(settings, file=args.config, environ=environ, overrides=overrides)
    return config
