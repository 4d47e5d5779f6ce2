"""Auth bypass attempts against a gateway with `--api-key` and `--admin-token`: no key, wrong
keys, other schemes, the key in the query string, admin calls from loopback without the
token, path tricks on `/admin/drain` and `/v1/models`.

Each must be refused (401, or at least never a 2xx) without echoing the key, and none may
drain the gateway; the probes and `/metrics` stay open; the right credentials work, the
admin token last, since it drains.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import trio

from benchmarks.fault_matrix.harness import (
    ADMIN_TOKEN,
    API_KEY,
    CHAT,
    Case,
    Matrix,
    chat,
    exit_code,
    ready_status,
    serves,
    start,
    stop,
    tally,
)
from benchmarks.fault_matrix.raw_http import call, openai_error


async def run(matrix: Matrix) -> None:
    group = "auth bypass"
    gateway = await start("--api-key", API_KEY, "--admin-token", ADMIN_TOKEN)
    port = gateway.port
    good = [("authorization", f"Bearer {API_KEY}")]
    try:

        async def refused_all(
            attempts: list[tuple[str, str, list[tuple[str, str]]]], c: Case, status: int = 401
        ) -> None:
            seen: Counter[int] = Counter()
            for method, path, headers in attempts:
                body = chat() if method == "POST" else None
                answer = await call(port, method, path, body, headers)
                seen[answer.status] += 1
                error = openai_error(answer)
                c.check(
                    answer.status == status
                    and error is not None
                    and API_KEY not in answer.body.decode(errors="replace"),
                    f"{method} {path} {headers}: {answer.short()}",
                )
            c.check(not await serves(port, headers=good), "the right key is refused")
            c.observed = f"{len(attempts)} tried: {tally(seen)}"

        def keyed(value: str | None, *paths: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
            headers = [] if value is None else [("authorization", value)]
            out = []
            for path in paths or (CHAT,):
                out.append(("GET" if path.startswith("/v1/models") else "POST", path, headers))
            return out

        await matrix.run(
            group,
            "no key (chat, completions, models)",
            "401 invalid_api_key each",
            partial(refused_all, keyed(None, CHAT, "/v1/completions", "/v1/models")),
        )
        await matrix.run(
            group,
            "wrong keys (other key, prefix, suffix, other case, empty, two keys)",
            "401 each, the key never echoed",
            partial(
                refused_all,
                [
                    *keyed("Bearer k2", CHAT, "/v1/models"),
                    *keyed(f"Bearer {API_KEY[:-1]}"),
                    *keyed(f"Bearer {API_KEY}x"),
                    *keyed(f"Bearer {API_KEY.upper()}"),
                    *keyed("Bearer "),
                    *keyed(f"Bearer k2 {API_KEY}"),
                    *keyed(f"Bearer {API_KEY},{API_KEY}"),
                ],
            ),
        )
        await matrix.run(
            group,
            "other schemes (Basic, bare key, Token, x-api-key/api-key headers)",
            "401 each",
            partial(
                refused_all,
                [
                    *keyed(f"Basic {API_KEY}"),
                    *keyed(API_KEY),
                    *keyed(f"Token {API_KEY}"),
                    *keyed(f"Bearer\t{API_KEY}x"),
                    ("POST", CHAT, [("x-api-key", API_KEY)]),
                    ("POST", CHAT, [("api-key", API_KEY)]),
                ],
            ),
        )
        await matrix.run(
            group,
            "key in the query string",
            "401 each",
            partial(
                refused_all,
                [
                    ("POST", f"{CHAT}?api_key={API_KEY}", []),
                    ("POST", f"{CHAT}?key={API_KEY}", []),
                    ("GET", f"/v1/models?api_key={API_KEY}", []),
                    ("POST", f"{CHAT}?authorization=Bearer%20{API_KEY}", []),
                ],
            ),
        )

        async def odd_case_scheme(c: Case) -> None:
            results = {}
            for scheme in ("bearer", "BEARER", "bEaReR"):
                answer = await call(
                    port, "POST", CHAT, chat(), [("authorization", f"{scheme} {API_KEY}")]
                )
                results[scheme] = answer.status
                c.check(
                    answer.status == 200 and answer.ends_with_done, f"{scheme}: {answer.short()}"
                )
            c.observed = ", ".join(f"{k} {v}" for k, v in results.items())

        await matrix.run(
            group,
            "odd-case scheme with the right key",
            "200 (the scheme is case-insensitive, RFC 9110 §11.1; the key is not)",
            odd_case_scheme,
        )

        async def open_probes(c: Case) -> None:
            statuses = {}
            for path in ("/live", "/ready", "/health", "/metrics"):
                statuses[path] = (await call(port, "GET", path)).status
            c.check(all(s == 200 for s in statuses.values()), f"{statuses}")
            c.observed = ", ".join(f"{p} {s}" for p, s in statuses.items())

        await matrix.run(
            group, "probes and /metrics without a key", "200 (they stay open)", open_probes
        )

        async def not_drained(
            attempts: list[tuple[str, str, list[tuple[str, str]]]], c: Case
        ) -> None:
            seen: Counter[int] = Counter()
            for method, path, headers in attempts:
                answer = await call(port, method, path, None, headers)
                seen[answer.status] += 1
                c.check(not 200 <= answer.status < 300, f"{method} {path}: {answer.short()}")
                ready = await ready_status(port)
                c.check(ready == 200, f"{method} {path} drained the gateway (/ready {ready})")
                if ready != 200:
                    return
            c.observed = f"{len(attempts)} tried: {tally(seen)}; /ready 200 throughout"

        admin_key = [("authorization", f"Bearer {API_KEY}")]
        await matrix.run(
            group,
            "admin from loopback, token configured: none, the API key, wrong",
            "401 each; never drained",
            partial(
                not_drained,
                [
                    ("POST", "/admin/drain", []),
                    ("GET", "/admin/workers", []),
                    ("POST", "/admin/drain", admin_key),
                    ("POST", "/admin/drain", [("authorization", f"Bearer {ADMIN_TOKEN}x")]),
                    ("POST", "/admin/drain", [("authorization", f"Basic {ADMIN_TOKEN}")]),
                    ("POST", f"/admin/drain?token={ADMIN_TOKEN}", []),
                    ("DELETE", "/admin/workers/mock", []),
                ],
            ),
        )
        tricks = [
            "/v1/../admin/drain",
            "//admin/drain",
            "/%2e%2e/admin/drain",
            "/v1/%2e%2e/admin/drain",
            "/v1/%2E%2E/%2E%2E/admin/drain",
            "/admin/./drain",
            "/admin//drain",
            "/admin/drain/",
            "/ADMIN/drain",
            "/%61dmin/drain",
            "/admin%2fdrain",
            "/admin/drain%00",
            "/admin/drain;x",
            "/./admin/drain",
            "http://127.0.0.1/admin/drain",
        ]
        await matrix.run(
            group,
            f"{len(tricks)} path tricks to POST /admin/drain without the token",
            "never 2xx, never drained",
            partial(not_drained, [("POST", trick, admin_key) for trick in tricks]),
        )
        v1_tricks = [
            "//v1/models",
            "/v1/./models",
            "/v1//models",
            "/%76%31/models",
            "/v1/models/",
            "/V1/models",
            "/x/../v1/models",
        ]
        await matrix.run(
            group,
            f"{len(v1_tricks)} path tricks to /v1/models without a key",
            "never 2xx",
            partial(not_drained, [("GET", trick, []) for trick in v1_tricks]),
        )

        async def admin_ok(c: Case) -> None:
            token = [("authorization", f"Bearer {ADMIN_TOKEN}")]
            workers = await call(port, "GET", "/admin/workers", None, token)
            drained = await call(port, "POST", "/admin/drain", None, token)
            try:
                ready: int | str = await ready_status(port)
            except (OSError, trio.BrokenResourceError):
                # Nothing was in flight: the drain is over and the process gone, or going
                # (a connection it accepted as it exited is reset).
                ready = "refused"
            code = await exit_code(gateway, 10)
            c.check(workers.status == 200, f"GET /admin/workers {workers.short()}")
            c.check(200 <= drained.status < 300, f"drain {drained.short()}")
            c.check(ready in (503, "refused"), f"/ready {ready} after the drain")
            c.check(code == 0, f"exit code {code}")
            said = f"drain {drained.status}, then /ready {ready}; exit {code}"
            c.observed = f"workers {workers.status}, {said}"

        await matrix.run(
            group,
            "the admin token (control: last, it drains)",
            "2xx, the drain runs (/ready 503, nothing in flight: exit 0)",
            admin_ok,
        )
    finally:
        await stop(gateway)
