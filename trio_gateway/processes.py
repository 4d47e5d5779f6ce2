"""`trio-gateway serve --processes N`: N whole gateways on one port, and their supervisor.

One gateway process is bound by one core: under load most of its CPU goes to writing small
SSE events (hypercorn's h11 framing and the `send` calls), work that does not share across
cores inside one Python process. Each child here is a complete gateway with its own
listening socket bound with SO_REUSEPORT, so the kernel spreads connections across them
and no byte passes through the supervisor. What that means, in the README: each child
has its own engine connections, router view and admission queue (like N replicas behind
one address); metrics are summed across children (prometheus multiprocess mode, the
directory set up here); sessions need `--session-store` to follow a client from one
child to another; `/admin/workers` and `/admin/drain` are refused (they would reach one
child).

The supervisor starts the children, forwards SIGTERM and SIGINT to them (each drains as a
single gateway does, and a second signal cuts them short), and exits when all have; it
forwards SIGHUP too, on which each child reloads its backends from the config file. A
child that drains and exits 0 stops the set the same way (exit 0); one that fails stops it
with exit 1, so the process manager restarts the whole set. A child whose supervisor is
gone (SIGKILL, OOM) drains and exits: it checks its parent every `ORPHAN_CHECK_S`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from trio_gateway.metrics import MULTIPROC_ENV, forget_process

log = logging.getLogger("trio_gateway.processes")

ORPHAN_CHECK_S = 1.0


def child_argv(argv: Sequence[str]) -> list[str]:
    """The command line of one child: the same settings, one process, its own socket.

    Flags given last win, and flags win over the environment and the file, so a
    `processes` setting from any source is overridden here.
    """
    return [
        sys.executable,
        "-m",
        "trio_gateway.cli",
        *argv,
        "--processes",
        "1",
        "--reuse-port",
        "true",
        "--supervisor-pid",
        str(os.getpid()),
    ]


class StartupError(Exception):
    """A gateway or worker that cannot start; the message is one line, fit to print as is."""


def listening_socket(
    host: str,
    port: int,
    backlog: int,
    *,
    reuse_port: bool = False,
    port_flag: str = "--port",
    listen: bool = True,
) -> socket.socket:
    """A listening TCP socket on `host`:`port` (only bound, without `listen`); with
    `reuse_port`, one that other processes can bind as well (SO_REUSEPORT). `StartupError`
    names the address and the flag to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock: socket.socket | None = None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        if listen:
            sock.listen(backlog)
    except OSError as error:
        if sock is not None:
            sock.close()
        raise StartupError(cannot_listen(host, port, error, port_flag)) from None
    return sock


def check_can_listen(host: str, port: int, port_flag: str, *, reuse_port: bool = False) -> None:
    """`StartupError` now if `host`:`port` cannot be bound, for sockets bound later by code
    that would say it less plainly. Bound, not listening: no connection lands on it."""
    listening_socket(
        host, port, 0, reuse_port=reuse_port, port_flag=port_flag, listen=False
    ).close()


def cannot_listen(host: str, port: int, error: OSError, port_flag: str) -> str:
    bare = host.strip("[]")
    address = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    if isinstance(error, socket.gaierror):
        return f"cannot listen on {address}: unknown host ({error.strerror}); change --host"
    reasons = {
        errno.EADDRINUSE: "the address is already in use (another process listens there); "
        f"choose another port with {port_flag}, or another --host",
        errno.EADDRNOTAVAIL: "no interface of this machine has that address; change --host "
        "(0.0.0.0 listens on every interface)",
        errno.EACCES: "permission denied (ports below 1024 need privileges); choose another "
        f"port with {port_flag}",
        errno.EAFNOSUPPORT: "this machine has no IPv6; change --host",
    }
    reason = reasons.get(
        error.errno or 0, f"{error.strerror or error}; check --host and {port_flag}"
    )
    return f"cannot listen on {address}: {reason}"


async def supervise(argv: Sequence[str], processes: int) -> int:
    """Run `processes` children until they have all exited; the exit status of the set."""
    # Named for its supervisor: one killed outright cannot remove it, an operator can.
    metrics_dir = tempfile.mkdtemp(prefix=f"trio-gateway-metrics-{os.getpid()}-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    children: list[trio.Process] = []
    spawned = trio.Event()
    stopping = False
    failed = False

    def stop_all(signum: int) -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(signum)

    async def run_child(index: int) -> None:
        nonlocal stopping, failed
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only,
        # which passes it on once (a second one would cut the drain short).
        child = await trio.lowlevel.open_process(child_argv(argv), env=env, process_group=0)
        children.append(child)
        if len(children) == processes:
            spawned.set()
        log.info("gateway process %d started (pid %d)", index, child.pid)
        if stopping:  # a signal or a failure came while it was starting
            child.send_signal(signal.SIGTERM)
        code = await child.wait()
        forget_process(child.pid, metrics_dir)
        # 0: it drained (someone sent it SIGTERM itself, as systemd's default KillMode does
        # to every process); killed by the signal passed on before it had its handlers: a stop.
        clean = code in (0, -signal.SIGTERM, -signal.SIGINT)
        if stopping or clean:
            log.info("gateway process %d (pid %d) exited with %d", index, child.pid, code)
            failed = failed or not clean
            if not stopping:
                stopping = True
                stop_all(signal.SIGTERM)
            return
        log.error(
            "gateway process %d (pid %d) exited with %d on its own: stopping the others",
            index,
            child.pid,
            code,
        )
        stopping = failed = True
        stop_all(signal.SIGTERM)

    async def forward_hangups() -> None:
        """SIGHUP: every child reloads its backends. Listened for only once every child
        exists: until then the supervisor ignores it, and so does each child, which
        inherits that across exec until its own `serve` listens for it."""
        await spawned.wait()
        with trio.open_signal_receiver(signal.SIGHUP) as hangups:
            async for _ in hangups:
                log.info("SIGHUP: passing it on to every gateway process (reload)")
                stop_all(signal.SIGHUP)

    async def forward_signals(signals: AsyncIterator[int]) -> None:
        nonlocal stopping
        async for signum in signals:
            stopping = True
            log.info("%s: passing it on to every gateway process", signal.Signals(signum).name)
            stop_all(signum)

    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward_signals, signals)
                nursery.start_soon(forward_hangups)
                async with trio.open_nursery() as running:
                    for index in range(processes):
                        running.start_soon(run_child, index)
                nursery.cancel_scope.cancel()
    finally:
        # Children still running here means the supervisor itself is being torn down.
        for child in children:
            if child.returncode is None:
                child.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


async def stop_when_orphaned(
    stop: Callable[[str], None], supervisor_pid: int, interval: float = ORPHAN_CHECK_S
) -> None:
    """In a child: no orphan keeps serving on the shared port. (PR_SET_PDEATHSIG would fire
    when the thread that forked it ends, and trio forks from a cached worker thread.)"""
    while os.getppid() == supervisor_pid:  # noqa: ASYNC110 - another process: no event
        await trio.sleep(interval)
    stop("the supervisor is gone")


def run(argv: Sequence[str], processes: int) -> int:
    # Ignored until every child exists (`forward_hangups`), and in each child, which
    # inherits it: a reload signal never kills a process that is still starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return trio.run(supervise, argv, processes)
