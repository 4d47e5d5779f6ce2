"""`/admin/workers` lists, adds, refuses and removes workers; an added worker nothing listens
for (a real connection refused on 127.0.0.1:9) is quarantined."""

from __future__ import annotations

import trio
import trio.testing

from tests.support.asgi_client import running_gateway
from tests.support.bodies import chat

CHAT = "/v1/chat/completions"


async def test_admin_workers_api(autojump_clock: trio.testing.MockClock) -> None:
    async with running_gateway() as harness:
        listed = await harness.request("GET", "/admin/workers")
        assert [w["id"] for w in listed.json()["workers"]] == ["mock"]
        added = await harness.request("POST", "/admin/workers", {"url": "ws://127.0.0.1:9"})
        assert added.status == 201
        assert added.json()["available"] is False  # nothing listens there: quarantined
        again = await harness.request("POST", "/admin/workers", {"url": "ws://127.0.0.1:9"})
        assert again.status == 409
        bad = await harness.request("POST", "/admin/workers", {"url": "ftp://x"})
        assert bad.status == 400
        listed = await harness.request("GET", "/admin/workers")
        assert len(listed.json()["workers"]) == 2
        removed = await harness.request("DELETE", "/admin/workers/ws://127.0.0.1:9")
        assert removed.status == 200
        assert (await harness.request("DELETE", "/admin/workers/nope")).status == 404
        listed = await harness.request("GET", "/admin/workers")
        assert [w["id"] for w in listed.json()["workers"]] == ["mock"]
        ok = await harness.request("POST", CHAT, chat(max_tokens=2))
        assert ok.status == 200


async def test_an_upstream_added_under_another_spelling_is_one_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The engine keeps a normalised URL (no trailing slash, no password): adding it answers
    # with that backend, and the same address spelled otherwise is a 409, not a 500.
    async with running_gateway() as harness:
        added = await harness.request("POST", "/admin/workers", {"url": "http://127.0.0.1:9/v1/"})
        assert added.status == 201, added.json()
        assert added.json()["url"] == "http://127.0.0.1:9/v1"
        for spelling in ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/"):
            again = await harness.request("POST", "/admin/workers", {"url": spelling})
            assert again.status == 409, again.json()
            assert again.json()["error"]["code"] == "duplicate_worker"
        listed = await harness.request("GET", "/admin/workers")
        assert len(listed.json()["workers"]) == 2
