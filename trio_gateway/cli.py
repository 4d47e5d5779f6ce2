"""`trio-gateway serve`: the gateway on hypercorn's trio worker, configured by one dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trio_gateway import __version__
from trio_gateway.config import (
    ConfigError,
    GatewayConfig,
    WorkerConfig,
    add_config_flags,
    config_from_args,
)
from trio_gateway.http import socket_writes
from trio_gateway.http.application import GatewayApp, create_app
from trio_gateway.lifecycle.shutdown import GracefulShutdown
from trio_gateway.logs import configure_logging
from trio_gateway.processes import reuse_port_socket, stop_when_orphaned
from trio_gateway.processes import run as run_processes
from trio_gateway.worker.server import WorkerServer

log = logging.getLogger("trio_gateway")

SECRET_SETTINGS = frozenset(
    {"api_keys", "admin_token", "worker_token", "upstream_api_key", "token"}
)


def hypercorn_config(config: GatewayConfig) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.keep_alive_timeout = config.keep_alive_timeout_s
    hc.graceful_timeout = config.graceful_timeout_s
    hc.backlog = config.backlog
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def forward_signals(shutdown: GracefulShutdown) -> None:
    """SIGTERM or SIGINT starts the drain; a second one cuts it short (DESIGN §5)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            shutdown.request_stop(signal.Signals(signum).name)


async def serve(
    app: GatewayApp,
    config: GatewayConfig,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn stops accepting only once the gateway's own drain has finished."""
    socket_writes.install()
    hc = hypercorn_config(config)
    if config.reuse_port:  # one of `--processes`: hypercorn listens on a socket we bound
        sock = reuse_port_socket(config.host, config.port, config.backlog)
        hc.bind = [f"fd://{sock.detach()}"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward_signals, app.gateway.shutdown)
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


async def run_worker(server: WorkerServer) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward_signals, server.shutdown)
        await server.serve()
        nursery.cancel_scope.cancel()
    log.info("worker stopped")


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
    """`key = value` lines (TOML), secrets masked."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in SECRET_SETTINGS and value:
            value = ["****"] * len(value) if isinstance(value, tuple) else "****"
        if f.name == "session_store" and value:
            value = re.sub(r"//([^@/]*)@", "//****@", value)  # a password in the URL
        if isinstance(value, tuple):
            value = list(value)
        lines.append(f"{f.name} = {json.dumps(value)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args)
    try:
        if args.command == "worker":
            worker_config = config_from_args(args, kind=WorkerConfig)
            configure_logging(worker_config.log_level, worker_config.log_format)
            server = WorkerServer(worker_config)
        else:
            config = config_from_args(args)
            configure_logging(config.log_level, config.log_format)
            if config.processes > 1:
                return run_processes(sys.argv[1:] if argv is None else argv, config.processes)
            app = create_app(config)
    except ConfigError as error:
        print(f"trio-gateway: {error}", file=sys.stderr)
        return 2
    if args.command == "worker":
        trio.run(run_worker, server)
    else:
        log.info(
            "serving %s (mock engine: ttft %g ms, step %g ms, %d seqs)",
            ", ".join(config.workers) or config.model,
            config.mock_ttft_ms,
            config.mock_itl_ms,
            config.mock_max_num_seqs,
        )
        trio.run(partial(serve, app, config))
    exit_without_teardown(0)
    return 0


def check_config(args: argparse.Namespace) -> int:
    """`trio-gateway check-config`: exit 0 and the effective settings, or 2 and one line."""
    try:
        config = config_from_args(args)
        config.accepted_api_keys()
    except ConfigError as error:
        print(f"trio-gateway: {error}", file=sys.stderr)
        return 2
    print(effective_settings(config))
    return 0


def exit_without_teardown(code: int) -> None:
    """Exit once everything has been said and closed, skipping the interpreter's teardown.

    Finalising the imported modules takes 150-300 ms here: time a rolling deploy waits on
    a process that has already drained, closed its connections and flushed its logs.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
