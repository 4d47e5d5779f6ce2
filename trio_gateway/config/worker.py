"""`trio-gateway worker`'s settings (`config/sources.py` fills them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from trio_gateway.backend_urls import UPSTREAM_SCHEMES, BadURL, check_backend_url
from trio_gateway.config.settings import ConfigError, check_logging, check_tls_settings, setting


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
        check_logging(self.log_level, self.log_format)
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
        check_tls_settings(self)
        if self.upstream_client_key and not self.upstream_client_cert:
            raise ConfigError("upstream_client_key: given without upstream_client_cert")
