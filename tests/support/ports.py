"""Loopback ports for the system lane's tests: one free for a process to bind, one that
refuses connections at once (bound, never listening), so no test depends on a fixed number."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A port free a moment ago, for a child process to bind (it may be taken in between:
    the price of passing a number on a command line)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once, and no other
    process can take it while the block runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()
