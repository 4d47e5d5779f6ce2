"""What each gateway replica routed, told to the others through Redis, so that `cache_aware`
routing on every replica knows the prefixes every replica sent.

Consistency: eventual, and never on a request's path. A replica routes on its own index
alone; what it routed is batched and appended to one Redis stream every `FLUSH_INTERVAL_S`,
and every replica tails that stream and folds the others' records into its index. So two
replicas agree a few milliseconds after a routing decision, not at it. The alternative,
asking Redis on every request, would put a network round trip (and Redis's availability)
in front of every first token, to gain agreement only on the first request of a new prefix
that two replicas route in the same few milliseconds: they may then send it to two
backends, which costs one extra prefill, and the next request sees both records. The index
is approximate by nature (the engine evicts on its own), so exactness bought nothing.

A Redis stream rather than pub/sub: a replica that starts (or reconnects) reads back the
latest `CATCH_UP_ENTRIES` and resumes from the last entry it saw, so a restart does not
forget the fleet's picture. The stream is trimmed (approximately) to `STREAM_MAX_LEN`
entries, and every index entry still expires by its own age, so memory stays bounded on
both sides. A Redis outage leaves routing working on the local picture; errors are counted
and logged once per outage.

The wire format is compact on purpose: a routing record is the backend's name and its
block hashes as 8-byte integers, many records per stream entry.
"""

from __future__ import annotations

import logging
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import trio

log = logging.getLogger("trio_gateway.router")

STREAM_KEY = b"trio-gateway:prefixes"
FLUSH_INTERVAL_S = 0.02
STREAM_MAX_LEN = 20_000  # entries (each a flush's batch)
CATCH_UP_ENTRIES = 500
READ_BLOCK_MS = 250
CALL_TIMEOUT_S = 1.0  # must exceed READ_BLOCK_MS
RETRY_AFTER_S = 1.0
MAX_PENDING = 4096  # records waiting for a flush; past it the oldest are dropped
MAX_HASHES = 65_535  # per record (a u16 count)
REPUBLISH_AFTER_S = 30.0  # a prefix routed again is told again after this long

Record = tuple[str, list[int]]


def encode_records(records: Sequence[Record]) -> bytes:
    """Backend name (u16 length, UTF-8), hash count (u16), the hashes (u64 each), repeated."""
    parts: list[bytes] = []
    for backend, hashes in records:
        name = backend.encode()
        hashes = hashes[:MAX_HASHES]
        parts.append(struct.pack(">HH", len(name), len(hashes)))
        parts.append(name)
        parts.append(struct.pack(f">{len(hashes)}Q", *hashes))
    return b"".join(parts)


def decode_records(data: bytes) -> list[Record]:
    """The records of one entry; a malformed tail (another version, a bad writer) is dropped,
    never raised: another replica's bytes must not break this one's routing."""
    records: list[Record] = []
    offset = 0
    while offset + 4 <= len(data):
        name_len, count = struct.unpack_from(">HH", data, offset)
        offset += 4
        end = offset + name_len + 8 * count
        if end > len(data):
            break
        try:
            backend = data[offset : offset + name_len].decode()
        except UnicodeDecodeError:
            break
        hashes = list(struct.unpack_from(f">{count}Q", data, offset + name_len))
        records.append((backend, hashes))
        offset = end
    return records


class Republishing:
    """Which prefixes this replica told lately, so that a hot prompt routed a hundred times a
    second is told once per `REPUBLISH_AFTER_S`, not a hundred times (bounded LRU)."""

    def __init__(self, capacity: int = 16_384, after_s: float = REPUBLISH_AFTER_S) -> None:
        self._told: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._capacity = capacity
        self._after_s = after_s

    def due(self, backend: str, hashes: Sequence[int], now: float) -> bool:
        if not hashes:
            return False
        key = (backend, hashes[-1])  # the last block's hash stands for the whole prefix
        told = self._told.get(key)
        if told is not None and now - told < self._after_s:
            self._told.move_to_end(key)
            return False
        self._told[key] = now
        self._told.move_to_end(key)
        while len(self._told) > self._capacity:
            self._told.popitem(last=False)
        return True


class PrefixSharing:
    """The Redis side: `publish` (called by the policy after each choice, no I/O) and `run`
    (flushes and tails the stream until cancelled). `apply(backend, hashes, now)` folds a
    record from another replica into the local index; `knows(backend)` keeps records about
    backends this replica does not route to out of it."""

    def __init__(
        self,
        url: str,
        apply: Callable[[str, list[int], float], None],
        knows: Callable[[str], bool],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError("prefix sharing: expected redis://[:PASSWORD@]HOST:PORT/DB")
        self._host = parts.hostname
        self._port = parts.port or 6379
        self._db = int(parts.path.strip("/") or 0)
        self._username = parts.username or None
        self._password = parts.password or None
        self.url = f"redis://{self._host}:{self._port}/{self._db}"  # never the password
        self.replica = secrets.token_hex(8).encode()
        self._apply = apply
        self._knows = knows
        self._on_error = on_error
        self._pending: list[Record] = []
        self._republishing = Republishing()
        self._last_id = b"$"
        self._failing = False
        self.received = 0  # records folded in from other replicas
        self.sent = 0

    def publish(self, backend: str, hashes: list[int]) -> None:
        if not self._republishing.due(backend, hashes, trio.current_time()):
            return
        self._pending.append((backend, hashes))
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import coredis

        client: Any = coredis.Redis(
            host=self._host,
            port=self._port,
            db=self._db,
            username=self._username,
            password=self._password,
            decode_responses=False,
            connect_timeout=CALL_TIMEOUT_S,
            stream_timeout=CALL_TIMEOUT_S,
        )
        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_forever, client)
            nursery.start_soon(self._tail_forever, client)
            task_status.started()

    async def _flush_forever(self, client: Any) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL_S)
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            ok = await self._call(
                "publish",
                partial(
                    client.xadd,
                    STREAM_KEY,
                    {b"r": self.replica, b"d": encode_records(batch)},
                    trim_strategy=_pure_token("MAXLEN"),
                    threshold=STREAM_MAX_LEN,
                    trim_operator=_pure_token("APPROXIMATELY"),
                ),
            )
            if ok:
                self.sent += len(batch)
            else:
                await trio.sleep(RETRY_AFTER_S)

    async def _tail_forever(self, client: Any) -> None:
        caught_up = False
        while True:
            if not caught_up:
                entries = await self._call(
                    "catch up", lambda: client.xrevrange(STREAM_KEY, count=CATCH_UP_ENTRIES)
                )
                if entries is None:
                    await trio.sleep(RETRY_AFTER_S)
                    continue
                caught_up = True
                # Read on from the newest entry seen, or from the very start of a stream
                # that was empty: "$" would skip what another replica adds before our read.
                self._last_id = entries[0].identifier if entries else b"0-0"
                self._fold(reversed(entries))
                continue
            answer = await self._call(
                "read",
                lambda: client.xread({STREAM_KEY: self._last_id}, count=256, block=READ_BLOCK_MS),
            )
            if answer is None:
                await trio.sleep(RETRY_AFTER_S)
                continue
            if answer is _EMPTY:
                continue
            for entries in answer.values():
                if entries:
                    self._last_id = entries[-1].identifier
                self._fold(entries)

    def _fold(self, entries: Iterator[Any] | Sequence[Any]) -> None:
        now = trio.current_time()
        for entry in entries:
            fields = entry.field_values
            if fields.get(b"r") == self.replica:
                continue
            for backend, hashes in decode_records(fields.get(b"d", b"")):
                if self._knows(backend):
                    self._apply(backend, hashes, now)
                    self.received += 1

    async def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """The call's answer (`_EMPTY` for a read that found nothing), or None when it failed."""
        try:
            with trio.fail_after(CALL_TIMEOUT_S):
                result = await call()
        except Exception as error:
            if self._on_error is not None:
                self._on_error()
            if not self._failing:
                log.warning(
                    "prefix sharing %s: %s failed (%s); routing on this replica's picture only",
                    self.url,
                    what,
                    type(error).__name__,
                )
            self._failing = True
            return None
        if self._failing:
            log.info("prefix sharing %s answers again", self.url)
            self._failing = False
        return _EMPTY if result is None else result


_EMPTY: Any = object()


def _pure_token(name: str) -> Any:
    from coredis.tokens import PureToken

    return getattr(PureToken, name)
