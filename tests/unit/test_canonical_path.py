"""Auth and routing read one spelling of the path (`http/auth.py::canonical_path`, which
every router reads, and `routed_path`, how werkzeug matches it)."""

from __future__ import annotations

import pytest

from trio_gateway.http.auth import canonical_path, routed_path


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/v1/models", "/v1/models"),
        ("/", "/"),
        ("//admin/drain", "//admin/drain"),
        ("/admin/./drain", "/admin/drain"),
        ("/./admin/drain", "/admin/drain"),
        ("/v1/../admin/drain", "/admin/drain"),
        ("/x/../v1/models", "/v1/models"),
        ("/..", "/"),
        ("/../../admin/drain", "/admin/drain"),
        ("/admin/drain/", "/admin/drain/"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/admin/workers/ws://127.0.0.1:9001", "/admin/workers/ws://127.0.0.1:9001"),
        ("http://127.0.0.1/admin/drain", "/admin/drain"),
        ("https://gateway:8443/v1/chat/completions", "/v1/chat/completions"),
        ("http://host", "/"),
    ],
)
def test_canonical_path(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical
    assert canonical_path(canonical) == canonical  # a fixed point


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("//admin/drain", "/admin/drain"),
        ("/admin//drain", "/admin/drain"),
        ("///v1/chat/completions", "/v1/chat/completions"),
        ("/admin/workers/ws://h:1", "/admin/workers/ws:/h:1"),  # still judged as admin
    ],
)
def test_routed_path(path: str, routed: str) -> None:
    assert routed_path(path) == routed
