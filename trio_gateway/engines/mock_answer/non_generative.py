"""The mock's answers to `/v1/embeddings`, `/tokenize` and `/detokenize` (pure, no I/O).

Deterministic, like the rest of the mock, so that a test can predict them and compare an
answer relayed through the gateway or a worker with the mock's own:

- an embedding is a unit vector seeded by a hash of its input, float32 like OpenAI's (so
  the `float` and `base64` forms carry the same numbers), `EMBEDDING_DIMENSIONS` long;
  `dimensions` keeps the first ones and normalises again (what OpenAI's shortened
  `text-embedding-3` vectors are);
- tokenizing follows the mock's count (`prompt_token_count`: four characters a token):
  each 4-character piece is a token. A piece of ASCII characters 1-127 has an id that
  spells it (base 128, the first character lowest), so `/detokenize` inverts it; any other
  piece gets a hashed id above those, which detokenizes to U+FFFD, as a byte-level
  tokenizer's half of a character does.

The shapes are OpenAI's (embeddings) and vLLM's (`{"count", "max_model_len", "tokens"}`,
`{"prompt"}`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

import orjson

from trio_gateway.errors import invalid_request
from trio_gateway.generation import Chunk, GenerationRequest
from trio_gateway.openai.non_generative import detokenize_tokens, embeddings_inputs

EMBEDDING_DIMENSIONS = 256
PIECE_CHARS = 4
SPELLED_IDS = 1 << (7 * PIECE_CHARS)  # ids below spell their piece (7 bits a character)
HASHED_IDS = 1 << 20  # ids of the other pieces: SPELLED_IDS + hash % HASHED_IDS
VOCAB_SIZE = SPELLED_IDS + HASHED_IDS
UNKNOWN_PIECE = "\ufffd"


def answer(request: GenerationRequest, max_model_len: int | None) -> Chunk:
    """The whole answer as the one chunk that ends the request; `GatewayError` (400) for a
    request the mock cannot serve (dimensions above its own, an id outside its vocabulary)."""
    body = request.body
    if request.endpoint == "embeddings":
        document, prompt_tokens = embeddings(body, request.model)
    elif request.endpoint == "tokenize":
        ids, pieces = tokenize(request.prompt)
        document = {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}
        if body.get("return_token_strs") is True:
            document["token_strs"] = pieces
        prompt_tokens = len(ids)
    elif request.endpoint == "detokenize":
        tokens = detokenize_tokens(body)
        document = {"prompt": detokenize(tokens)}
        prompt_tokens = len(tokens)
    else:
        raise ValueError(f"not a non-generative endpoint: {request.endpoint}")
    return Chunk(
        tokens=0, finish_reason="stop", prompt_tokens=prompt_tokens, payload=orjson.dumps(document)
    )


def embeddings(body: dict[str, Any], model: str) -> tuple[dict[str, Any], int]:
    """OpenAI's embeddings answer, and its prompt tokens."""
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    if dimensions > EMBEDDING_DIMENSIONS:
        raise invalid_request(
            f"Invalid 'dimensions': {dimensions} is above the model's {EMBEDDING_DIMENSIONS}.",
            "dimensions",
            "invalid_value",
        )
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    prompt_tokens = 0
    for index, item in enumerate(embeddings_inputs(body)):
        if isinstance(item, str):
            seed = item.encode()
            prompt_tokens += len(tokenize(item)[0])
        else:
            seed = orjson.dumps(item)
            prompt_tokens += len(item)
        packed = struct.pack(f"<{dimensions}f", *unit_vector(seed, dimensions))
        vector: str | list[float] = (
            base64.b64encode(packed).decode()
            if as_base64
            else list(struct.unpack(f"<{dimensions}f", packed))
        )
        data.append({"object": "embedding", "index": index, "embedding": vector})
    document = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return document, prompt_tokens


def unit_vector(seed: bytes, dimensions: int) -> list[float]:
    """The first `dimensions` of the input's full vector, normalised: a shortened vector
    points the same way as the full one's head."""
    rng = random.Random(hashlib.blake2b(seed, digest_size=16).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(EMBEDDING_DIMENSIONS)][:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def tokenize(text: str) -> tuple[list[int], list[str]]:
    """The token ids of `text` and the pieces they stand for."""
    pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
    return [_piece_id(piece) for piece in pieces], pieces


def _piece_id(piece: str) -> int:
    if all(0 < ord(c) < 128 for c in piece):
        return sum(ord(c) << (7 * i) for i, c in enumerate(piece))
    digest = hashlib.blake2b(piece.encode(), digest_size=8).digest()
    return SPELLED_IDS + int.from_bytes(digest, "little") % HASHED_IDS


def detokenize(ids: list[int]) -> str:
    """The text of `ids`; 400 for an id outside the mock's vocabulary, as vLLM answers."""
    pieces = []
    for token in ids:
        if not 0 <= token < VOCAB_SIZE:
            raise invalid_request(
                f"Token id {token} is out of vocabulary (the mock's has {VOCAB_SIZE} ids).",
                "tokens",
                "invalid_value",
            )
        if token >= SPELLED_IDS:
            pieces.append(UNKNOWN_PIECE)
            continue
        chars = []
        while token:
            token, code = divmod(token, 128)
            chars.append(chr(code))
        pieces.append("".join(chars))
    return "".join(pieces)
