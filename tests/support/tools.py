"""A tool definition for requests that exercise tool calls."""

from __future__ import annotations

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
