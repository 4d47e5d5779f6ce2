"""Flow control per request: a worker sends a chunk only against credit the gateway gave.

The gateway grants `window` credits with `generate` and returns them as its client takes
the chunks, so a slow client slows the worker's engine across the network instead of
piling chunks up in either process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass(eq=False)
class CreditWindow:
    """How many more chunks of one request may go out before the gateway acknowledges."""

    available: int
    _more: trio.Event = field(default_factory=trio.Event)

    async def take(self) -> None:
        while self.available <= 0:
            await self._more.wait()
        self.available -= 1

    def give(self, n: int) -> None:
        self.available += n
        self._more.set()
        self._more = trio.Event()
