"""The fast write path installs itself only on the hypercorn and h11 versions it was written
for, and installing twice is harmless."""

from __future__ import annotations

from typing import Any

import pytest
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from trio_gateway.http import socket_writes
from trio_gateway.http.socket_writes import WRITTEN_FOR


def pinned(hypercorn: str, h11: str) -> Any:
    return lambda name: {"hypercorn": hypercorn, "h11": h11}[name]


def test_install_is_idempotent_and_only_for_the_hypercorn_it_was_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TCPServer, "protocol_send", socket_writes._hypercorn_protocol_send)
    monkeypatch.setattr(H11Protocol, "stream_send", socket_writes._hypercorn_stream_send)
    for other in (pinned("0.99.0", socket_writes.H11_WRITTEN_FOR), pinned(WRITTEN_FOR, "0.17.0")):
        monkeypatch.setattr(socket_writes, "version", other)
        assert socket_writes.install() is False
        assert TCPServer.protocol_send is socket_writes._hypercorn_protocol_send
        assert H11Protocol.stream_send is socket_writes._hypercorn_stream_send
    monkeypatch.setattr(
        socket_writes, "version", pinned(WRITTEN_FOR, socket_writes.H11_WRITTEN_FOR)
    )
    assert socket_writes.install() is True
    assert socket_writes.install() is True
    assert TCPServer.protocol_send is socket_writes.fast_protocol_send
    assert H11Protocol.stream_send is socket_writes.fast_stream_send
