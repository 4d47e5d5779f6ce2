"""Mutated request bodies, seeded: wrong types, truncated JSON, huge numbers, odd unicode,
deep nesting.

Whatever the body, the gateway must answer 200 (a whole answer) or a 4xx with an OpenAI
error body: never a 5xx, never an `internal` error counted, and it must go on serving.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import trio

from benchmarks.fault_matrix.harness import (
    CHAT,
    REQUESTS,
    Case,
    Matrix,
    metric,
    serves,
    tally,
)
from benchmarks.fault_matrix.raw_http import call, openai_error

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    -1,
    0,
    1.5,
    -0.0,
    "",
    "x",
    "0",
    [],
    {},
    [1, 2],
    {"a": 1},
    2**64,
    -(2**63),
    1e308,
    "NaN",
    [None],
    "\u0000",
]
FIELDS = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "stream_options",
    "mock",
    "presence_penalty",
    "logprobs",
    "tools",
    "user",
]
HUGE = [
    "1e400",
    "-1e400",
    "1" + "0" * 400,
    "123456789012345678901234567890",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e-400",
    "-0",
    "0.0000000000000000000000001",
    "1E+999999",
]
STRINGS = [
    "\ud800",
    "\udfff",
    "\u202e\u0000",
    "😀" * 1000,
    "e\u0301" * 500,
    "\uffff",
    "\x00\x01\x02",
    "💥" * 10,
    "a" * 100_000,
    "\\u0000",
    "\u2028\u2029",
]


def valid_body(rng: random.Random) -> dict[str, Any]:
    endpoint_chat = {
        "model": "mock",
        "stream": rng.random() < 0.5,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    return endpoint_chat


def mutate(rng: random.Random, kind: str) -> bytes:
    """One mutated chat body of the given kind, as bytes (seeded: the same run each time)."""
    body = valid_body(rng)
    if kind == "wrong types":
        for _ in range(rng.randint(1, 3)):
            target = rng.choice([*FIELDS, "messages[0]", "role", "content"])
            value = rng.choice(ODD_VALUES)
            if target == "messages[0]":
                body["messages"][0] = value
            elif target in ("role", "content"):
                message = body["messages"][0] if isinstance(body["messages"], list) else None
                if isinstance(message, dict):
                    message[target] = value
            elif rng.random() < 0.2:
                body.pop(target, None)
            else:
                body[target] = value
        return json.dumps(body).encode()
    if kind == "truncated JSON":
        text = json.dumps(body).encode()
        cut = rng.randrange(0, len(text))
        if rng.random() < 0.3:  # or a byte changed instead
            text = text[:cut] + bytes([rng.randrange(256)]) + text[cut + 1 :]
            return text
        return text[:cut]
    if kind == "huge numbers":
        target = rng.choice(
            [
                "max_tokens",
                "temperature",
                "top_p",
                "n",
                "presence_penalty",
                "seed",
                "logit_bias",
                "top_logprobs",
            ]
        )
        literal = rng.choice(HUGE)
        template = json.dumps({**body, target: "__HUGE__"})
        if target == "logit_bias":
            return template.replace('"__HUGE__"', '{"50256": ' + literal + "}").encode()
        return template.replace('"__HUGE__"', literal).encode()
    if kind == "unicode":
        choice = rng.randrange(5)
        if choice == 0:  # raw bytes that are not UTF-8
            return json.dumps(body).encode().replace(b"hello", bytes([0xFF, 0xFE, 0xC3]))
        if choice == 1:  # an odd model name
            body["model"] = rng.choice(STRINGS)[:200]
        elif choice == 2:
            body["messages"][0]["content"] = rng.choice(STRINGS)
        elif choice == 3:
            body[rng.choice(STRINGS)[:50]] = rng.choice(STRINGS)[:50]
        else:
            body["messages"][0]["role"] = rng.choice([*STRINGS, "USER", "system ", "tool"])[:50]
        return json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    # nesting
    depth = rng.choice([10, 100, 1000, 1100, 5000, 100_000])
    choice = rng.randrange(4)
    if choice == 0:
        nested = "[" * depth + "]" * depth
        return json.dumps({**body, "user": "__N__"}).replace('"__N__"', nested).encode()
    if choice == 1:
        nested = '{"a":' * depth + "1" + "}" * depth
        return json.dumps({**body, "metadata": "__N__"}).replace('"__N__"', nested).encode()
    if choice == 2:
        nested = "[" * depth + '"text"' + "]" * depth
        return json.dumps(body).replace('"hello there"', nested).encode()
    parts = [{"type": "text", "text": "x"}] * rng.choice([1, 10, 1000])
    body["messages"][0]["content"] = parts if rng.random() < 0.5 else [parts]
    return json.dumps(body).encode()


MUTATIONS = ["wrong types", "truncated JSON", "huge numbers", "unicode", "nesting"]


async def run(matrix: Matrix, port: int, count: int, seed: int) -> None:
    group = "mutated bodies"
    rng = random.Random(seed)
    per_kind = count // len(MUTATIONS)
    for kind in MUTATIONS:
        bodies = [mutate(rng, kind) for _ in range(per_kind)]

        async def send_all(c: Case, bodies: list[bytes] = bodies, kind: str = kind) -> None:
            statuses: Counter[int] = Counter()
            bad: list[str] = []
            internal_before = await metric(port, REQUESTS, error_type="internal")

            async def one(index: int, body: bytes) -> None:
                try:
                    answer = await call(port, "POST", CHAT, body, seconds=15)
                except (OSError, ConnectionError, trio.TooSlowError) as error:
                    bad.append(f"#{index}: {error!r} for {body[:100]!r}")
                    return
                statuses[answer.status] += 1
                if answer.status == 200:
                    stream = answer.headers.get("content-type", "").startswith("text/event-stream")
                    whole = answer.ends_with_done if stream else isinstance(answer.json(), dict)
                    if not whole or answer.error_frames:
                        bad.append(f"#{index}: 200 but {answer.short()}")
                elif 400 <= answer.status < 500:
                    if openai_error(answer) is None:
                        bad.append(f"#{index}: {answer.short()} is not an OpenAI error body")
                else:
                    bad.append(f"#{index}: {answer.short()} for {body[:100]!r}")

            limit = trio.CapacityLimiter(8)

            async def limited(index: int, body: bytes) -> None:
                async with limit:
                    await one(index, body)

            async with trio.open_nursery() as nursery:
                for index, body in enumerate(bodies):
                    nursery.start_soon(limited, index, body)
            internal = await metric(port, REQUESTS, error_type="internal") - internal_before
            c.check(not bad, f"{len(bad)} bad answers: {bad[:5]}")
            c.check(internal == 0, f"requests_total{{internal}} +{internal:g}")
            problem = await serves(port)
            c.check(not problem, problem)
            c.observed = f"{len(bodies)} sent: {tally(statuses)}; serving"

        await matrix.run(
            group,
            f"{per_kind} {kind}",
            "each 200 (whole) or 4xx with an OpenAI error body, never 5xx; serving",
            send_all,
            seconds=60,
        )
