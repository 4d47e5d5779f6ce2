"""Auth and routing read one spelling of the path (`http/auth.py::canonical_path`)."""

from __future__ import annotations

import pytest

from trio_gateway.http.auth import canonical_path


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/v1/models", "/v1/models"),
        ("/", "/"),
        ("//admin/drain", "/admin/drain"),
        ("/admin//drain", "/admin/drain"),
        ("/admin/./drain", "/admin/drain"),
        ("/./admin/drain", "/admin/drain"),
        ("/v1/../admin/drain", "/admin/drain"),
        ("/x/../v1/models", "/v1/models"),
        ("/..", "/"),
        ("/../../admin/drain", "/admin/drain"),
        ("/admin/drain/", "/admin/drain/"),
        ("/a/b/..", "/a/"),
        ("http://127.0.0.1/admin/drain", "/admin/drain"),
        ("https://gateway:8443//v1/chat/completions", "/v1/chat/completions"),
        ("http://host", "/"),
    ],
)
def test_canonical_path(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical
    assert canonical_path(canonical) == canonical  # a fixed point
