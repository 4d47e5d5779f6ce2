"""Request bodies the tests send, so each test states only what differs from the usual one."""

from __future__ import annotations

from typing import Any


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    """A chat completion body for the mock model with one user message."""
    return {"model": "mock", "messages": [{"role": "user", "content": content}], **extra}
