"""Backend URLs every way of naming a backend must refuse, and ones it must take."""

from __future__ import annotations

BAD_URLS = [
    "http://",
    "http://127.0.0.1:notaport/v1",
    "https://:8000/v1",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:65536/v1",
    "ws://",
    "ws://:9001",
    "ws://127.0.0.1",  # a worker's port is not implied
    "ws://127.0.0.1:99999",
    "ws://user:secret@127.0.0.1:9001",
    "wss://127.0.0.1",  # nor a secure one's
    "wss://user:secret@127.0.0.1:9443",
    "ftp://127.0.0.1/v1",
    "127.0.0.1:9001",
    "http://127.0.0.1:8001/v1?x=1",
    "http://127.0.0.1 :8001/v1",
    "http://[::1/v1",
    "http://exa<mple/v1",
]


GOOD_URLS = [
    "ws://127.0.0.1:9001",
    "ws://worker-0.workers:9001/",
    "ws://[::1]:9001/plane",
    "wss://worker-0.workers:9443",
    "http://127.0.0.1:8001/v1",
    "http://vllm/v1",
    "https://api.example.com/v1",
    "http://user:pass@[::1]:8001/v1",
]
