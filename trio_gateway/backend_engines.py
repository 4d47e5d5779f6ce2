"""Which engine a backend entry makes, with its capacity, key and TLS: the one place the
settings turn into engines (the in-process mock aside), and how they are described in the
start-up line."""

from __future__ import annotations

from collections.abc import Callable

from trio_gateway.backend_urls import redact
from trio_gateway.backends_config import BackendSpec, specs_from_urls
from trio_gateway.config import GatewayConfig
from trio_gateway.engines.mock import MockEngine
from trio_gateway.engines.protocol import Engine
from trio_gateway.tls import ClientTLS


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
