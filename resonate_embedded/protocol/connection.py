"""A WebSocket to a server: serialised sends, receives stamped with local time.

Transport only: no knowledge of message meaning.  Text frames are returned as
``str``, binary frames as ``bytes``; each with the local time (µs) at which the
frame was handed to us, which is T4 for clock exchanges.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from resonate_embedded.clock.local import local_now_us

# Deliberate limits (README "Limits"), used by the dial-out path here and by the listener:
# the largest legitimate message is an audio chunk (25 ms of 192 kHz x 8 ch x 32 bit is
# 150 KiB; a server may batch more) or a stream/start with a codec header; 4 MiB leaves
# room for that and bounds what a hostile server can make us buffer: trio-websocket
# closes the connection with 1009 (MESSAGE_TOO_BIG) as soon as a message grows past it.
MAX_MESSAGE_BYTES = 4 << 20
MESSAGE_QUEUE_SIZE = 64  # received messages waiting for the session (then TCP back-pressure)
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the peer's answering close frame


@attrs.frozen
class Received:
    data: str | bytes
    local_us: int


class Connection:
    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._send_lock = trio.Lock()

    async def send_text(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send_message(text)

    async def receive(self) -> Received:
        """Next frame; raises ConnectionClosed when the server is gone."""
        data = await self._ws.get_message()
        return Received(data, local_now_us())

    async def close(self) -> None:
        """Close the WebSocket; returns within :data:`CLOSE_TIMEOUT_S` even when the peer
        never answers the close frame (trio-websocket alone would wait for it forever)."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose()


async def send_last_words(conn, text: str) -> None:
    """Send ``text`` on ``conn`` (plain or encrypted) before closing: at most 1 s, even when
    cancelled; a dead socket is fine."""
    with trio.move_on_after(1.0) as scope:
        scope.shield = True
        try:
            await conn.send_text(text)
        except (ConnectionClosed, trio.BrokenResourceError, OSError):
            pass


@asynccontextmanager
async def connect(url: str, timeout_s: float = 10.0) -> AsyncIterator[Connection]:
    """Open a WebSocket to ``url``; raises OSError/HandshakeError/ConnectionTimeout on failure."""
    async with open_websocket_url(url, max_message_size=MAX_MESSAGE_BYTES,
                                  message_queue_size=MESSAGE_QUEUE_SIZE,
                                  connect_timeout=timeout_s, disconnect_timeout=CLOSE_TIMEOUT_S,
                                  receive_buffer_size=65536) as ws:
        yield Connection(ws)


__all__ = ["MAX_MESSAGE_BYTES", "MESSAGE_QUEUE_SIZE", "Connection", "ConnectionClosed", "Received",
           "connect", "send_last_words"]
