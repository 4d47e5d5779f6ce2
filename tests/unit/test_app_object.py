"""`hypercorn trio_gateway.app:app` finds the gateway's ASGI app, with the fast write path
installed by the import alone."""

from __future__ import annotations

from hypercorn.trio.tcp_server import TCPServer

from trio_gateway.http import socket_writes
from trio_gateway.http.application import GatewayApp


def test_hypercorn_can_load_the_app_object() -> None:
    from hypercorn.utils import load_application

    wrapped = load_application("trio_gateway.app:app", 0)
    assert isinstance(wrapped.app, GatewayApp)
    assert TCPServer.protocol_send is socket_writes.fast_protocol_send
