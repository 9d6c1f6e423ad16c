"""The listener's connections: closing one never waits on the peer for ever."""

from __future__ import annotations

import base64
import os

import trio

from resonate_embedded.protocol.connection import CLOSE_TIMEOUT_S
from resonate_embedded.protocol.listener import open_listener


async def silent_peer(port: int) -> trio.SocketStream:
    """A peer that completes the WebSocket handshake on /sendspin, then never writes again
    (so it never answers a close frame)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /sendspin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 101 ")
    return stream


def test_close_gives_up_on_a_peer_that_never_answers_and_drops_the_socket():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener:
            stream = await silent_peer(listener.port)
            conn = await listener.incoming.receive()
            with trio.fail_after(CLOSE_TIMEOUT_S + 10):  # without the bound: never returns
                await conn.close()
            received = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):  # until the socket is closed
                    received += chunk
            assert received[:1] == b"\x88"  # what it got was our close frame, then EOF
            await stream.aclose()

    trio.run(main)
