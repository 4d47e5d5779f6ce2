"""`trio-gateway serve`: the gateway on hypercorn's trio worker, configured by one dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from http import HTTPStatus
from importlib.metadata import version

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.utils import LifespanFailureError

from trio_gateway import __version__
from trio_gateway.backend_engines import describe_backends, upstream_tls, worker_tls
from trio_gateway.config import (
    ConfigError,
    GatewayConfig,
    WorkerConfig,
    add_config_flags,
    config_from_args,
)
from trio_gateway.errors import ErrorKind, GatewayError
from trio_gateway.gateway import Gateway
from trio_gateway.http import socket_writes
from trio_gateway.http.application import GatewayApp, create_app
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.logs import configure_logging
from trio_gateway.openai.errors import encode_error
from trio_gateway.processes import (
    StartupError,
    check_can_listen,
    listening_socket,
    stop_when_orphaned,
)
from trio_gateway.processes import run as run_processes
from trio_gateway.tls import ALPN
from trio_gateway.worker.server import WorkerServer

log = logging.getLogger("trio_gateway")


def hypercorn_config(config: GatewayConfig) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.keep_alive_timeout = config.keep_alive_timeout_s
    hc.graceful_timeout = config.graceful_timeout_s
    hc.backlog = config.backlog
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    if config.certfile:
        # hypercorn's own TLS: its listener wraps each accepted socket in a `trio.SSLStream`,
        # the bound `fd://` socket of `serve` included. HTTP/1.1 only: the inference path and
        # `http/socket_writes.py` are written for it (hypercorn would offer h2 first).
        hc.certfile = config.certfile
        hc.keyfile = config.keyfile
        hc.keyfile_password = config.keyfile_password or None
        hc.alpn_protocols = list(ALPN)
        if config.ca_certs:
            hc.ca_certs = config.ca_certs
            hc.verify_mode = ssl.CERT_REQUIRED
    return hc


def check_tls(hc: HypercornConfig) -> None:
    """hypercorn loads its certificate only once the lifespan has started: loaded here
    first, a bad file is one line naming the setting, before any engine starts."""
    try:
        hc.create_ssl_context()
    except (OSError, ssl.SSLError) as error:
        reason = error.reason if isinstance(error, ssl.SSLError) else error.strerror
        raise ConfigError(
            f"certfile: cannot load {hc.certfile} with {hc.keyfile}"
            f"{' and ca_certs ' + str(hc.ca_certs) if hc.ca_certs else ''}: {reason or error}"
        ) from None


def check_tls_files(config: GatewayConfig) -> None:
    """Load every TLS file the settings name (`ConfigError` on the first that fails), as
    `serve` will: its listener's, and the client side's when a backend is https or wss."""
    if config.certfile:
        check_tls(hypercorn_config(config))
    schemes = {spec.url.split("://", 1)[0] for spec in config.backend_specs()}
    if "https" in schemes:
        upstream_tls(config).context()
    if "wss" in schemes:
        worker_tls(config).context()


# h11 refuses these before the ASGI app sees the request; hypercorn answers them itself.
PROTOCOL_ERRORS = {
    400: ("The request is not valid HTTP/1.1.", "malformed_request"),
    431: ("The request line or headers are too large.", "headers_too_large"),
    501: (
        "Unsupported Transfer-Encoding: send the body with Content-Length or with "
        "Transfer-Encoding: chunked alone.",
        "unsupported_transfer_encoding",
    ),
}
ERROR_BODIES_WRITTEN_FOR = "0.18.0"  # the hypercorn whose H11Protocol this relies on


async def _send_error_body(self: H11Protocol, status_code: int) -> None:
    """hypercorn's `H11Protocol._send_error_response` with an OpenAI-shaped body instead of
    an empty one; like hypercorn's, it closes the connection after."""
    message, code = PROTOCOL_ERRORS.get(status_code, (HTTPStatus(status_code).phrase, None))
    error = GatewayError(ErrorKind.VALIDATION, message, code=code, status_override=status_code)
    body = encode_error(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


def install_error_bodies() -> bool:
    """Put `_send_error_body` in place (idempotent); False, and hypercorn's empty answers,
    on another hypercorn than the one it was written for."""
    if H11Protocol._send_error_response is _send_error_body:
        return True
    if version("hypercorn") != ERROR_BODIES_WRITTEN_FOR:
        log.warning(
            "hypercorn %s is not %s: malformed requests get its empty answers",
            version("hypercorn"),
            ERROR_BODIES_WRITTEN_FOR,
        )
        return False
    H11Protocol._send_error_response = _send_error_body  # type: ignore[method-assign]
    return True


async def forward_signals(shutdown: GracefulShutdown) -> None:
    """SIGTERM or SIGINT starts the drain; a second one cuts it short (docs/architecture.md §6)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            shutdown.request_stop(signal.Signals(signum).name)


async def reload_on_hangup(gateway: Gateway, load: Callable[[], GatewayConfig]) -> None:
    """SIGHUP re-reads the config file and applies its backends (`Gateway.reload`); one
    reload at a time, in the order the signals came."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("SIGHUP: reloading the backends from the configuration")
            try:
                await gateway.reload(load)
            except Exception:  # a backend that failed to start: the gateway serves on
                log.exception("reload: failed; the backends may be partly reloaded")


async def serve(
    app: GatewayApp,
    config: GatewayConfig,
    *,
    load: Callable[[], GatewayConfig] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn stops accepting only once the gateway's own drain has finished. With
    `load` (how the settings were read), SIGHUP reloads the backends."""
    socket_writes.install()
    install_error_bodies()
    hc = hypercorn_config(config)
    if config.certfile:
        check_tls(hc)
    # hypercorn listens on a socket bound here (shared with the other `--processes` under
    # `reuse_port`): a failure to bind is one line naming the flag, before any engine starts.
    sock = listening_socket(config.host, config.port, config.backlog, reuse_port=config.reuse_port)
    hc.bind = [f"fd://{sock.detach()}"]
    log.info("serving %s", describe_backends(config))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward_signals, app.gateway.shutdown)
        if load is not None:
            nursery.start_soon(reload_on_hangup, app.gateway, load)
        if config.supervisor_pid:
            nursery.start_soon(
                stop_when_orphaned, app.gateway.shutdown.request_stop, config.supervisor_pid
            )
        await hypercorn_serve(
            app,  # type: ignore[arg-type]
            hc,
            shutdown_trigger=app.gateway.shutdown.wait_stopped,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def run_worker(
    server: WorkerServer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward_signals, server.shutdown)
        await server.serve(task_status=task_status)
        nursery.cancel_scope.cancel()
    log.info("worker stopped")


async def run_until_stopped(run: Callable[..., Awaitable[object]]) -> None:
    """`run(task_status=...)` to its end; a failure before it has started is `StartupError`
    (one line), one after it is left as it is (a crash, with its traceback)."""
    started = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            started = True
    except Exception as error:
        # hypercorn reports started before a failed ASGI lifespan startup surfaces.
        if started and not any(_is_lifespan_startup(leaf) for leaf in _leaves(error)):
            raise
        log.debug("start-up failed", exc_info=error)
        raise StartupError(startup_failure(error)) from None


def startup_failure(error: BaseException) -> str:
    """One line for what stopped a start-up: our own message when one is in `error`; empty
    when it has been logged already."""
    leaves = list(_leaves(error))
    for leaf in leaves:
        if isinstance(leaf, StartupError | ConfigError):
            return str(leaf)
    if any(_is_lifespan_startup(leaf) for leaf in leaves):
        return ""  # the gateway's startup has logged why, in one line
    leaf = leaves[0] if leaves else error
    return f"cannot start: {str(leaf).splitlines()[0] if str(leaf) else type(leaf).__name__}"


def _is_lifespan_startup(error: BaseException) -> bool:
    return isinstance(error, LifespanFailureError) and str(error).startswith(
        "Lifespan failure in startup."
    )


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway (mock engine by default)")
    add_config_flags(serve_parser)
    worker_parser = commands.add_parser(
        "worker", help="run an engine worker behind the WebSocket request plane"
    )
    add_config_flags(worker_parser, WorkerConfig)
    check_parser = commands.add_parser(
        "check-config",
        help="validate settings (file, environment, flags) and print the effective ones",
    )
    add_config_flags(check_parser)
    return parser


def effective_settings(config: GatewayConfig) -> str:
    """`key = value` lines (TOML), secrets masked; then each `[[backends]]` table, its key
    shown only as where it comes from."""
    lines = []
    for f in dataclasses.fields(config):
        if f.name == "backends":
            continue
        value = getattr(config, f.name)
        if not f.repr and value:  # a secret (`setting(..., secret=True)`)
            value = ["****"] * len(value) if isinstance(value, tuple) else "****"
        if f.name == "session_store" and value:
            value = re.sub(r"//([^@/]*)@", "//****@", value)  # a password in the URL
        if isinstance(value, tuple):
            value = list(value)
        lines.append(f"{f.name} = {json.dumps(value)}")
    for spec in config.backends:
        lines += ["", "[[backends]]"]
        for key, value in spec.described().items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    """A TOML value: JSON's strings, numbers and arrays are TOML's; a table is inline."""
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + " }"
        )
    return json.dumps(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "serve":
        # A SIGHUP before `serve` listens for it (a reload sent to a process still starting,
        # or by a supervisor to a child) must not kill it, as its default action would.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if args.command == "worker":
            worker_config = config_from_args(args, kind=WorkerConfig)
            configure_logging(worker_config.log_level, worker_config.log_format)
            server = WorkerServer(worker_config)
            # Its listeners are bound inside trio-websocket and hypercorn: check first, so
            # that a port in use is said plainly, with the flag that sets it.
            check_can_listen(worker_config.host, worker_config.port, "--port")
            check_can_listen(worker_config.host, worker_config.metrics_port, "--metrics-port")
            trio.run(run_until_stopped, partial(run_worker, server))
        else:
            config = config_from_args(args)
            configure_logging(config.log_level, config.log_format)
            if config.certfile:
                check_tls(hypercorn_config(config))
            if config.processes > 1:
                # Said once here rather than by every child.
                check_can_listen(config.host, config.port, "--port", reuse_port=True)
                return run_processes(sys.argv[1:] if argv is None else argv, config.processes)
            app = create_app(config)
            load = partial(config_from_args, args)
            trio.run(run_until_stopped, partial(serve, app, config, load=load))
    except ConfigError as error:
        print(f"trio-gateway: {error}", file=sys.stderr)
        return 2
    except StartupError as error:
        if str(error):
            print(f"trio-gateway: {error}", file=sys.stderr)
        return 1
    exit_without_teardown(0)
    return 0


def check_config(args: argparse.Namespace) -> int:
    """`trio-gateway check-config`: exit 0 and the effective settings, or 2 and one line."""
    try:
        config = config_from_args(args)
        config.accepted_api_keys()
        check_tls_files(config)
    except ConfigError as error:
        print(f"trio-gateway: {error}", file=sys.stderr)
        return 2
    try:
        print(effective_settings(config), flush=True)
    except BrokenPipeError:
        # `check-config | head -1`: the reader has what it wanted. Nothing more goes to the
        # closed pipe (at exit either, where it would be a traceback).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def exit_without_teardown(code: int) -> None:
    """Exit once everything has been said and closed, skipping the interpreter's teardown.

    Finalising the imported modules is time a rolling deploy waits on a process that has
    already drained, closed its connections and flushed its logs (measured in the README).
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
