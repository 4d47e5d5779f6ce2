"""The gateway on hypercorn on an ephemeral loopback port, as `trio-gateway serve` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio
from hypercorn.trio import serve

from trio_gateway.cli import hypercorn_config, install_error_bodies
from trio_gateway.gateway import Gateway
from trio_gateway.http import socket_writes
from trio_gateway.http.application import GatewayApp

T = TypeVar("T")


@asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[str]:
    """`gateway` on hypercorn as `trio-gateway serve` runs it, on an ephemeral loopback port;
    yields its base URL and stops it on exit."""
    hc = hypercorn_config(gateway.config)
    hc.bind = ["127.0.0.1:0"]
    socket_writes.install()
    install_error_bodies()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                GatewayApp(gateway), hc, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(fn)
