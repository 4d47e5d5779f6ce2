"""What a routing policy may look at in a request besides the candidates' load.

A request is routed more than once when it is retried on another backend or waits in the
queue; hashing a 32k-character prompt on each of those tries would cost more than the
choice itself, so the key keeps the block hashes of its prompt once computed.
"""

from __future__ import annotations

from trio_gateway.generation import GenerationRequest
from trio_gateway.router.prefix_index import block_hashes


class RouteKey:
    """The prompt as rendered (chat messages as text) and its model, which seeds the hashes:
    the same text for two models shares no cache."""

    __slots__ = ("_block_chars", "_hashes", "model", "prompt")

    def __init__(self, prompt: str = "", model: str = "") -> None:
        self.prompt = prompt
        self.model = model
        self._block_chars = 0
        self._hashes: list[int] = []

    @classmethod
    def of(cls, request: GenerationRequest) -> RouteKey:
        return cls(request.prompt, request.model)

    def hashes(self, block_chars: int) -> list[int]:
        """`block_hashes` of the prompt, computed on the first call for a block size."""
        if block_chars != self._block_chars:
            self._hashes = block_hashes(self.prompt, block_chars, seed=self.model)
            self._block_chars = block_chars
        return self._hashes

    def __repr__(self) -> str:
        return f"RouteKey(model={self.model!r}, prompt of {len(self.prompt)} characters)"


NO_KEY = RouteKey()  # a request routed on load alone (callers that know no prompt)
