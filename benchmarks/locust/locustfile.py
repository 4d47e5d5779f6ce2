"""Locust (a third-party load generator from PyPI) driving the gateway through the openai SDK.

    pip install locust==2.47.0 openai==3.54.0      # in a venv of its own: locust uses gevent
    trio-gateway serve --mock-max-num-seqs 4096 &
    locust -f benchmarks/locust/locustfile.py --headless -u 32 -r 32 -t 30s \\
        --host http://127.0.0.1:8000 --csv benchmarks/results/locust

Each simulated user streams chat completions (100 tokens at 10 ms/token, 5 ms prefill, as the
other benchmarks) with `openai.OpenAI(...).chat.completions.create(stream=True)`, and reports
three request types to Locust's statistics: `ttft` (time to the first content token),
`stream` (the whole response) and `tokens` (response length = tokens received). Locust's
own numbers are per request; tokens/s is the `tokens` rows' total over the run time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from locust import User, between, events, task
from openai import OpenAI

BODY: dict[str, Any] = {"mock": {"tokens": 100, "itl_ms": 10, "ttft_ms": 5}}

for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise
    logging.getLogger(noisy).setLevel(logging.WARNING)


class ChatStreamUser(User):  # type: ignore[misc]
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.client = OpenAI(base_url=self.host + "/v1", api_key="unused", max_retries=0)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def stream(self) -> None:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        error: Exception | None = None
        try:
            for chunk in self.client.chat.completions.create(
                model="mock",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                max_tokens=100,
                extra_body=BODY,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
        except Exception as failure:  # reported to Locust, which counts it as a failure
            error = failure
        end = time.perf_counter()
        fire = events.request.fire
        if first is not None:
            fire(
                request_type="ttft",
                name="chat",
                response_time=(first - start) * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        fire(
            request_type="stream",
            name="chat",
            response_time=(end - start) * 1000,
            response_length=tokens,
            exception=error,
            context={},
        )
        fire(
            request_type="tokens",
            name="chat",
            response_time=0,
            response_length=tokens,
            exception=None,
            context={},
        )
