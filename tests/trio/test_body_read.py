"""Reading a request body: the drain waits for it, and a deadline bounds it (issue 16, 1 and 3).

A request belongs to the gateway from the moment its headers are in: SIGTERM while its body
is still arriving must neither end the drain under it nor let it start streaming after the
drain; the body-read deadline (408) and the declared `Content-Length` (413 before reading)
keep a slow or huge upload from holding a connection, or the drain, for ever.

In memory on MockClock (the body fed in parts by hand); on a real socket:
tests/system/test_body_read_sockets.py.
"""

from __future__ import annotations

import math

import orjson
import pytest
import trio

from tests.support.asgi_client import Exchange, Harness, running_gateway
from tests.support.bodies import chat
from trio_gateway.config import GatewayConfig
from trio_gateway.http.asgi import Message
from trio_gateway.lifecycle.flight import SHUTDOWN, Flight
from trio_gateway.lifecycle.ledger import InFlightLedger
from trio_gateway.lifecycle.shutdown import Phase

CHAT = "/v1/chat/completions"
MIB = 1024 * 1024
READING = "trio_gateway_reading_requests"
BODY = orjson.dumps(chat(stream=True, mock={"tokens": 20, "itl_ms": 100}))


def upload(harness: Harness, first: bytes = b"", headers: dict[str, str] | None = None) -> Exchange:
    """A POST whose body has not finished arriving: `first` now, the rest by `feed`."""
    if headers is None:
        headers = {"content-length": str(len(BODY))}
    header_list = [(b"content-type", b"application/json")]
    header_list += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "http_version": "1.1",
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "extensions": {},
    }
    inbox_send, inbox = trio.open_memory_channel[Message](math.inf)
    if first:
        inbox_send.send_nowait({"type": "http.request", "body": first, "more_body": True})
    exchange = Exchange(_inbox=inbox_send)

    async def send(message: Message) -> None:
        exchange._record(message)
        if exchange.complete:
            inbox_send.send_nowait({"type": "http.disconnect"})

    async def run() -> None:
        try:
            await harness.app(scope, inbox.receive, send)
        finally:
            exchange.finished.set()
            exchange._record({"type": "app.finished"})

    harness.nursery.start_soon(run)
    return exchange


def feed(exchange: Exchange, data: bytes, more: bool = False) -> None:
    exchange._inbox.send_nowait({"type": "http.request", "body": data, "more_body": more})


async def trickle(exchange: Exchange, byte_every_s: float = 1.0) -> None:
    """A slowloris body: one byte a second, never the last."""
    while not exchange.finished.is_set():
        await trio.sleep(byte_every_s)
        feed(exchange, b" ", more=True)


def error_of(exchange: Exchange) -> dict[str, object]:
    error = exchange.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error, dict)
    return error


# --- the ledger: body reads count like flights ------------------------------------------------


async def test_the_ledger_waits_for_body_reads_and_cuts_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = InFlightLedger()
    read = ledger.start_reading(deadline=math.inf)
    assert (len(ledger), ledger.reading, ledger.owned) == (0, 1, 1)
    with trio.move_on_after(1) as waited:
        await ledger.wait_empty()
    assert waited.cancelled_caught
    assert ledger.cancel_all(SHUTDOWN) == 1
    assert read.scope.cancel_called and read.cancel_reason == SHUTDOWN
    ledger.done_reading(read)
    ledger.done_reading(read)  # twice: harmless
    with trio.fail_after(1):
        await ledger.wait_empty()


async def test_a_read_handed_over_to_its_flight_keeps_the_waiter_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Done reading, then in flight, with no checkpoint between: the waiter woken by the
    empty moment looks again and keeps waiting."""
    ledger = InFlightLedger()
    read = ledger.start_reading(deadline=math.inf)
    emptied = trio.Event()

    async def waiter() -> None:
        await ledger.wait_empty()
        emptied.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        flight = Flight("a", "mock", "chat", 0.0)
        ledger.done_reading(read)
        ledger.add(flight)
        await trio.sleep(1)
        assert not emptied.is_set()
        ledger.remove(flight)
        with trio.fail_after(1):
            await emptied.wait()


# --- 1: an upload under way at SIGTERM -------------------------------------------------------


async def test_an_upload_under_way_at_sigterm_holds_the_drain_then_gets_503_draining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=30)) as harness:
        late = upload(harness, BODY[:10])
        await trio.sleep(0.1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        await trio.sleep(1)
        # The drain has something to wait for: the request it owns, still uploading.
        assert harness.gateway.shutdown.phase is Phase.DRAINING
        assert harness.metric(READING) == 1
        feed(late, BODY[10:])
        with trio.fail_after(10):
            await late.finished.wait()
            await harness.gateway.shutdown.wait_stopped()
        assert late.status == 503
        assert late.headers[b"retry-after"] == b"5"
        assert error_of(late)["code"] == "draining"
        assert trio.current_time() == pytest.approx(1.1, abs=0.01)
        assert harness.metric(READING) == 0
        assert harness.gateway.shutdown.cut == 0


async def test_an_upload_finished_in_the_drain_delay_is_served_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_delay_s=5, drain_timeout_s=30)) as harness:
        early = upload(harness, BODY[:10])
        await trio.sleep(0.1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        await trio.sleep(1)
        feed(early, BODY[10:])  # still within the delay: taken, and the drain waits for it
        with trio.fail_after(30):
            await harness.gateway.shutdown.wait_stopped()
        assert early.status == 200
        assert early.events()[-1] == "[DONE]" and len(early.tokens()) == 20
        assert harness.gateway.shutdown.cut == 0


async def test_an_upload_that_never_finishes_gets_408_then_the_drain_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=30)) as harness:
        stuck = upload(harness, BODY[:10])
        await trio.sleep(0.1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        with trio.fail_after(60):
            await harness.gateway.shutdown.wait_stopped()
        assert stuck.finished.is_set()
        assert stuck.status == 408  # its body deadline (5 s), not hypercorn's bare 500
        assert error_of(stuck)["code"] == "request_timeout"
        assert trio.current_time() == pytest.approx(5.0, abs=0.01)
        assert harness.gateway.shutdown.cut == 0


async def test_a_drain_deadline_before_the_body_deadline_cuts_the_read_with_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway(GatewayConfig(drain_timeout_s=2)) as harness:
        stuck = upload(harness, BODY[:10])
        await trio.sleep(0.1)
        harness.gateway.shutdown.request_stop("SIGTERM")
        with trio.fail_after(60):
            await harness.gateway.shutdown.wait_stopped()
        assert trio.current_time() == pytest.approx(2.1, abs=0.01)
        assert stuck.status == 503
        assert error_of(stuck)["type"] == "shutdown"
        assert harness.gateway.shutdown.cut == 1
        assert harness.metric(READING) == 0


# --- 3: the body-read deadline, the declared length, the gauge --------------------------------


async def test_slowloris_bodies_are_counted_then_answered_408_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        slow = [upload(harness, b"{") for _ in range(50)]
        for exchange in slow:
            harness.nursery.start_soon(trickle, exchange)
        await trio.sleep(4)
        assert harness.metric(READING) == 50
        assert not any(e.finished.is_set() for e in slow)
        with trio.fail_after(20):
            for exchange in slow:
                await exchange.finished.wait()
        assert trio.current_time() == pytest.approx(5.0, abs=0.01)
        for exchange in slow:
            assert exchange.status == 408
            assert exchange.headers[b"connection"] == b"close"
            error = error_of(exchange)
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "request_timeout"
        assert harness.metric(READING) == 0
        assert len(harness.gateway.ledger) == 0


async def test_a_slow_body_that_arrives_in_time_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = orjson.dumps(chat(max_tokens=3))
    async with running_gateway() as harness:
        exchange = upload(harness, body[:5], {"content-length": str(len(body))})
        for i in range(5, len(body) - 1, 10):
            await trio.sleep(0.2)
            feed(exchange, body[i : i + 10], more=True)
        await trio.sleep(0.2)
        feed(exchange, b"")
        with trio.fail_after(10):
            await exchange.finished.wait()
        assert exchange.status == 200, exchange.body


async def test_a_declared_length_over_the_limit_is_413_before_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_gateway() as harness:
        huge = upload(harness, headers={"content-length": "99999999999"})  # no body sent
        with trio.fail_after(1):
            await huge.finished.wait()
        assert trio.current_time() == 0
        assert huge.status == 413
        assert huge.headers[b"connection"] == b"close"
        assert error_of(huge)["code"] == "request_too_large"
        assert harness.metric(READING) == 0
        exact = GatewayConfig().max_body_bytes
        at_limit = upload(harness, headers={"content-length": str(exact)})
        await trio.sleep(1)
        assert not at_limit.finished.is_set()  # not over the limit: read (until its deadline)


async def test_the_deadline_grows_with_the_declared_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = GatewayConfig(max_body_bytes=64 * MIB)
    async with running_gateway(config) as harness:
        big = upload(harness, b"{", headers={"content-length": str(32 * MIB)})
        harness.nursery.start_soon(trickle, big)
        with trio.fail_after(100):
            await big.finished.wait()
        assert big.status == 408
        assert trio.current_time() == pytest.approx(64.0, abs=0.01)  # 2 s per MiB


# --- the same on a real socket ----------------------------------------------------------------
