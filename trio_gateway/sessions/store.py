"""Where session affinity lives beyond one gateway: nowhere (in memory) or Redis.

With several gateway replicas behind one load balancer, a session's next request may reach
another replica; with `--session-store redis://HOST:PORT/DB` every replica records which
worker holds each session, with the session's idle timeout as the key's TTL.

A Redis outage must not take requests down: every call is bounded (`STORE_CALL_TIMEOUT_S`)
and a failing call degrades to what this replica knows on its own (its local table), so a
session stays sticky within a replica and may be re-opened elsewhere by another; the errors
are counted in `trio_gateway_session_store_errors_total` and logged once per outage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import trio

log = logging.getLogger("trio_gateway.sessions")

STORE_CALL_TIMEOUT_S = 0.5
KEY_PREFIX = "trio-gateway:session:"
T = TypeVar("T")


class SessionStore(Protocol):
    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def lookup(self, session_id: str) -> str | None:
        """The worker holding the session, if any replica recorded one."""
        ...

    async def record(self, session_id: str, worker: str, ttl: float) -> None: ...

    async def fresh(self, session_id: str) -> bool:
        """Whether some replica used the session within its timeout (so: do not close it)."""
        ...

    async def forget(self, session_id: str) -> None: ...


class RedisSessionStore:
    def __init__(self, url: str, on_error: Callable[[], None] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError("session store: expected redis://[:PASSWORD@]HOST:PORT/DB")
        self._host = parts.hostname
        self._port = parts.port or 6379
        self._db = int(parts.path.strip("/") or 0)
        self._username = parts.username or None
        self._password = parts.password or None
        # Never log the password: the URL as shown keeps only host, port and db.
        self.url = f"redis://{self._host}:{self._port}/{self._db}"
        self._client: Any = None
        self._on_error = on_error
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import coredis

        client = coredis.Redis(
            host=self._host,
            port=self._port,
            db=self._db,
            username=self._username,
            password=self._password,
            decode_responses=True,
            connect_timeout=STORE_CALL_TIMEOUT_S,
            stream_timeout=STORE_CALL_TIMEOUT_S,
        )
        async with client:
            self._client = client
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._client = None

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        if self._client is None:
            return default
        try:
            with trio.fail_after(STORE_CALL_TIMEOUT_S):
                result = await call()
        except Exception as error:
            if self._on_error is not None:
                self._on_error()
            if not self._failing:
                log.warning(
                    "session store %s: %s failed (%s); using local affinity only",
                    self.url,
                    what,
                    type(error).__name__,
                )
            self._failing = True
            return default
        if self._failing:
            log.info("session store %s answers again", self.url)
            self._failing = False
        return result

    async def lookup(self, session_id: str) -> str | None:
        value = await self._call("lookup", lambda: self._client.get(KEY_PREFIX + session_id), None)
        return value if isinstance(value, str) else None

    async def record(self, session_id: str, worker: str, ttl: float) -> None:
        milliseconds = max(1, int(ttl * 1000))
        await self._call(
            "record",
            lambda: self._client.set(KEY_PREFIX + session_id, worker, px=milliseconds),
            None,
        )

    async def fresh(self, session_id: str) -> bool:
        ttl = await self._call("ttl", lambda: self._client.pttl(KEY_PREFIX + session_id), -2)
        return isinstance(ttl, int) and ttl > 0

    async def forget(self, session_id: str) -> None:
        await self._call("forget", lambda: self._client.delete([KEY_PREFIX + session_id]), 0)
