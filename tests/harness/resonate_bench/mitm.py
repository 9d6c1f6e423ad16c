"""A WebSocket man in the middle for tests: forwards messages between whoever dials it
and ``upstream``, through a ``tamper`` function that may change, drop, duplicate them or
close the connection.

``tamper(direction, index, message, conn_no)``: ``direction`` is ``"c2s"`` (from the side
that dialled the proxy) or ``"s2c"``; ``index`` counts the messages of that direction on
connection ``conn_no`` (1, 2, ...).  It returns the message to forward, None (dropped), a
list (each forwarded), or :data:`CLOSE`: both sides are closed (code 1000) without
forwarding it, as a server that cannot parse a message does.

In-process, on 127.0.0.1::

    mitm = Mitm("ws://127.0.0.1:8927/sendspin", tamper)
    listeners = await nursery.start(mitm.serve)   # dial ws://127.0.0.1:{listeners.port}/...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

CLOSE = object()  # tamper's answer: close both sides
MAX_MESSAGE = 4 << 20

Tamper = Callable[[str, int, Any, int], Any]


class Mitm:
    """A WebSocket proxy to ``upstream`` that lets a test tamper with messages."""

    def __init__(self, upstream: str, tamper: Tamper) -> None:
        self.upstream = upstream
        self.tamper = tamper
        self.connections = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_websocket(self._handle, "127.0.0.1", 0, ssl_context=None,
                              task_status=task_status, max_message_size=MAX_MESSAGE)

    async def _handle(self, request) -> None:
        down = await request.accept()
        self.connections += 1
        conn_no = self.connections
        try:
            async with open_websocket_url(self.upstream, max_message_size=MAX_MESSAGE) as up:
                async with trio.open_nursery() as n:
                    n.start_soon(self._pump, down, up, "c2s", conn_no, n.cancel_scope)
                    n.start_soon(self._pump, up, down, "s2c", conn_no, n.cancel_scope)
        except (ConnectionClosed, OSError):
            pass
        finally:
            await down.aclose()

    async def _pump(self, src, dst, direction: str, conn_no: int, scope: trio.CancelScope) -> None:
        i = 0
        try:
            while True:
                msg = await src.get_message()
                out = self.tamper(direction, i, msg, conn_no)
                i += 1
                if out is CLOSE:
                    break
                for m in (out if isinstance(out, list) else [out]):
                    if m is not None:
                        await dst.send_message(m)
        except ConnectionClosed:
            pass
        scope.cancel()
