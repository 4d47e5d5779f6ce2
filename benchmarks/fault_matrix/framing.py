"""Header injection and request framing: CR or NUL in a header, a space before the colon,
request smuggling (both Content-Length and Transfer-Encoding), two lengths, an unknown
Transfer-Encoding, a malformed request line, a 1 TB Content-Length, obsolete line folding, an
odd X-Request-Id.

A bad head must be refused with an OpenAI error body and the connection closed, so that
nothing after it (a smuggled request) is ever read as a request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from benchmarks.fault_matrix.harness import CHAT, Case, Matrix, chat, serves
from benchmarks.fault_matrix.raw_http import (
    Connection,
    announced_body,
    call,
    openai_error,
    request_bytes,
)


async def run(matrix: Matrix, port: int) -> None:
    group = "header injection / framing"
    payload = json.dumps(chat()).encode()
    plain = request_bytes("POST", CHAT, payload)
    head, _, _ = plain.partition(b"\r\n\r\n")

    def with_header(line: bytes) -> bytes:
        return head + b"\r\n" + line + b"\r\n\r\n" + payload

    async def refused(
        raw: bytes,
        status: int,
        c: Case,
        *,
        closes: bool = True,
        code: str | None = None,
        extra: bytes | None = None,
    ) -> None:
        connection = await Connection.open(port)
        try:
            await connection.send(raw)
            answer = await connection.answer(check_closed=closes)
        finally:
            await connection.aclose()
        error = openai_error(answer)
        c.check(answer.status == status, f"status {answer.short()}")
        c.check(error is not None, f"not an OpenAI error body: {answer.body[:120]!r}")
        if code is not None:
            c.check(error is not None and error["code"] == code, f"code {error}")
        if closes:
            c.check(answer.closed, "the connection stayed open")
        if extra is not None:
            c.check(
                connection.raw.count(b"HTTP/1.1 ") == 1, "a second (smuggled) request was answered"
            )
        problem = await serves(port)
        c.check(not problem, problem)
        c.observed = (
            f"{answer.status} {error and error['code']}"
            + (", closed" if answer.closed else "")
            + ("" if extra is None else ", smuggled request unanswered")
        )

    smuggled = request_bytes("GET", "/admin/workers")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    cases: list[tuple[str, str, Callable[[Case], Awaitable[None]]]] = [
        (
            "CR inside a header value",
            "400 + close",
            partial(refused, with_header(b"x-a: b\rInjected: c"), 400),
        ),
        (
            "NUL inside a header value",
            "400 + close",
            partial(refused, with_header(b"x-a: b\x00c"), 400),
        ),
        ("space before the colon", "400 + close", partial(refused, with_header(b"x-a : b"), 400)),
        (
            "Content-Length and Transfer-Encoding, a request smuggled after",
            "400 conflicting_framing + close; the smuggled request unanswered",
            partial(
                refused,
                request_bytes(
                    "POST",
                    CHAT,
                    None,
                    [
                        ("content-type", "application/json"),
                        ("content-length", str(len(chunked))),
                        ("transfer-encoding", "chunked"),
                    ],
                )
                + chunked
                + smuggled,
                400,
                code="conflicting_framing",
                extra=smuggled,
            ),
        ),
        (
            "two different Content-Lengths",
            "400 + close",
            partial(refused, with_header(b"content-length: %d" % (len(payload) + 5)), 400),
        ),
        (
            "unknown Transfer-Encoding (gzip, chunked)",
            "501 + close",
            partial(
                refused,
                request_bytes(
                    "POST",
                    CHAT,
                    None,
                    [("content-type", "application/json"), ("transfer-encoding", "gzip, chunked")],
                )
                + chunked,
                501,
            ),
        ),
        (
            "malformed request line",
            "400 + close",
            partial(refused, b"POST  /v1/chat/completions HTTP/1.1 x\r\nhost: x\r\n\r\n", 400),
        ),
    ]
    for name, expected, body in cases:
        await matrix.run(group, name, expected, body)

    async def oversized(c: Case) -> None:
        connection = await Connection.open(port)
        try:
            # The head only: the answer must not wait for a body.
            await connection.send(announced_body(CHAT, 10**12))
            with trio.fail_after(3):
                answer = await connection.answer(check_closed=True)
        finally:
            await connection.aclose()
        error = openai_error(answer)
        c.check(answer.status == 413, f"status {answer.short()}")
        c.check(error is not None and error["code"] == "request_too_large", f"error {error}")
        c.check(answer.closed, "the connection stayed open")
        problem = await serves(port)
        c.check(not problem, problem)
        c.observed = f"{answer.status} {error and error['code']} with no body sent, closed"

    await matrix.run(
        group, "Content-Length of 1 TB", "413 before any body is read, closed", oversized
    )

    async def folded(c: Case) -> None:
        raw = with_header(b"x-request-id: abc\r\n  x-injected: 1")
        answer = await call(port, "POST", CHAT, raw=raw)
        echoed = answer.headers.get("x-request-id")
        c.check(
            answer.status == 400 or echoed == "abc x-injected: 1",
            f"{answer.short()}, x-request-id {echoed!r}",
        )
        c.check("x-injected" not in answer.headers, "the folded line became a header")
        c.observed = f"{answer.status}; x-request-id echoed as {echoed!r}"

    await matrix.run(
        group,
        "obsolete line folding (x-request-id: abc CRLF SP x-injected: 1)",
        "400, or one unfolded value (RFC 9112 §5.2 allows either); never a second header",
        folded,
    )

    async def echoed_id(c: Case) -> None:
        sent = "abc%0d%0aSet-Cookie:%20x=1\x7f\xe9" + "z" * 300
        answer = await call(port, "POST", CHAT, chat(), [("x-request-id", sent)])
        echoed = answer.headers.get("x-request-id", "")
        c.check(answer.status == 200 and answer.ends_with_done, f"answer {answer.short()}")
        c.check("set-cookie" not in answer.headers, "a header was injected")
        c.check(echoed == sent[:128], f"x-request-id echoed as {echoed[:60]!r}...")
        c.observed = f"200; x-request-id echoed as one header, cut to {len(echoed)} chars"

    await matrix.run(
        group,
        "X-Request-Id with encoded CRLF, DEL, Latin-1, 300+ chars",
        "200; echoed as one header (first 128 chars), nothing injected",
        echoed_id,
    )
