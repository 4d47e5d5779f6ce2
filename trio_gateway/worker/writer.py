"""A connection's one writer: every frame a worker sends on a connection goes through it.

Generations put their frames on the connection's outbox without waiting; the writer sends
whatever is queued together, consecutive chunks (of any requests) as one `chunks` frame, so
a batch step that yields a token for every running sequence costs one WebSocket message.
Order per request is kept: a request's `end` or `error` never overtakes its chunks.
"""

from __future__ import annotations

import trio
from trio_websocket import WebSocketConnection

from trio_gateway.plane.codec import encode
from trio_gateway.plane.frames import ChunkFrame, Chunks, End, ErrorFrame

Outbound = ChunkFrame | End | ErrorFrame


async def write(ws: WebSocketConnection, outgoing: trio.MemoryReceiveChannel[Outbound]) -> None:
    async for first in outgoing:
        queued: list[Outbound] = [first]
        while True:
            try:
                queued.append(outgoing.receive_nowait())
            except trio.WouldBlock:
                break
        chunks: list[ChunkFrame] = []
        for message in queued:
            if isinstance(message, ChunkFrame):
                chunks.append(message)
                continue
            await _send_chunks(ws, chunks)
            chunks = []
            await ws.send_message(encode(message))
        await _send_chunks(ws, chunks)


async def _send_chunks(ws: WebSocketConnection, chunks: list[ChunkFrame]) -> None:
    if len(chunks) == 1:
        await ws.send_message(encode(chunks[0]))
    elif chunks:
        await ws.send_message(encode(Chunks(tuple(chunks))))
