"""What a routing policy may look at in a request besides the candidates' load.

A request is routed more than once when it is retried on another backend or waits in the
queue; hashing a 32k-character prompt on each of those tries would cost more than the
choice itself, so the key keeps the block hashes of its prompt once computed.

A session's later request on an engine that keeps the session's history (the mock; see
`Engine.keeps_session_history`) is the exception to "the prompt is what the engine caches":
the engine puts the history (what it was sent and answered so far, which the gateway does
not hold) before the prompt, so it caches history + prompt, never the bare prompt at the
start of a sequence. Its key (`continuing`) hashes the prompt under a seed of its own per
session: what the policy records for it still counts towards the backend's share of the
index (the engine's cache did take those blocks, and more), but never matches another
request's prompt, which that cache could not serve either. The session's first request
runs on an empty history, so its plain key is exact, and that is the one the policy routes
on (later requests are pinned to the session's worker). An OpenAI server keeps no history
(the client resends the conversation): there the plain key is exact throughout.
"""

from __future__ import annotations

from trio_gateway.generation import GenerationRequest
from trio_gateway.router.prefix_index import block_hashes


class RouteKey:
    """The prompt as rendered (chat messages as text) and its model, which seeds the hashes:
    the same text for two models shares no cache."""

    __slots__ = ("_block_chars", "_hashes", "_seed", "model", "prompt", "session")

    def __init__(self, prompt: str = "", model: str = "", session: str = "") -> None:
        self.prompt = prompt
        self.model = model
        self.session = session
        # NUL keeps it apart from a plain key's seed (no served model's name holds one).
        self._seed = f"{model}\0session\0{session}" if session else model
        self._block_chars = 0
        self._hashes: list[int] = []

    @classmethod
    def of(cls, request: GenerationRequest) -> RouteKey:
        return cls(request.prompt, request.model)

    @classmethod
    def continuing(cls, request: GenerationRequest, session_id: str) -> RouteKey:
        """The key of a request in an open session: see the module docstring."""
        return cls(request.prompt, request.model, session_id)

    def hashes(self, block_chars: int) -> list[int]:
        """`block_hashes` of the prompt, computed on the first call for a block size."""
        if block_chars != self._block_chars:
            self._hashes = block_hashes(self.prompt, block_chars, seed=self._seed)
            self._block_chars = block_chars
        return self._hashes

    def __repr__(self) -> str:
        session = f", session={self.session!r}" if self.session else ""
        return f"RouteKey(model={self.model!r}{session}, prompt of {len(self.prompt)} characters)"


NO_KEY = RouteKey()  # a request routed on load alone (callers that know no prompt)
