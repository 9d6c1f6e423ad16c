"""Server-initiated mode: a WebSocket server that servers dial.

:func:`open_listener` binds ``host:port`` (default ``0.0.0.0:8928``, the spec's
recommended client port) and accepts WebSocket upgrades on ``/sendspin`` and
``/resonate`` (anything else gets HTTP 404).  Each accepted socket is handed over, in
arrival order, on :attr:`Listener.incoming` as an :class:`IncomingConnection`: the
interface of :class:`~resonate_embedded.protocol.connection.Connection` (``send_text``,
``receive`` → ``Received``, ``close``) plus ``path``, ``dialect``, ``remote`` and
``host``.  The caller speaks first on it (``client/hello``; the spec has the client speak
first whichever side dialled).

Guarantees: the listener never reads from or writes to a handed-over connection; the
socket stays open until the consumer calls :meth:`IncomingConnection.close` (or leaves
``async with conn``), the peer closes it, or the listener shuts down.  When the consumer
is not keeping up (``backlog`` connections queued), further sockets are closed at once.
What to do with several servers at once (admit one, say goodbye to the rest) is
:mod:`resonate_embedded.protocol.arbitration`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from resonate_embedded.protocol.connection import (
    CLOSE_TIMEOUT_S, MAX_MESSAGE_BYTES, Connection, Received,
)
from resonate_embedded.protocol.resonate_dialect import RESONATE_PATH, SENDSPIN_PATH, Dialect

log = logging.getLogger(__name__)

DEFAULT_CLIENT_PORT = 8928  # the spec's recommended port for a dialled client
PATHS: dict[str, Dialect] = {SENDSPIN_PATH: "sendspin", RESONATE_PATH: "resonate"}
DEFAULT_BACKLOG = 8


class IncomingConnection(Connection):
    """A socket a server opened to us; ``Connection`` plus where it came in."""

    def __init__(self, ws: WebSocketConnection, path: str, remote: str, host: str) -> None:
        super().__init__(ws)
        self.path = path
        self.dialect: Dialect = PATHS[path]
        self.remote = remote
        self.host = host  # the dialling server's IP address
        self._released = trio.Event()

    async def receive(self) -> Received:
        """Next frame; raises ConnectionClosed when the server is gone (which also lets
        the listener drop the socket)."""
        try:
            return await super().receive()
        except ConnectionClosed:
            self._released.set()
            raise

    async def close(self) -> None:
        """Close the socket (idempotent); the listener forgets it."""
        try:
            await super().close()
        finally:
            self._released.set()

    async def __aenter__(self) -> IncomingConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with trio.CancelScope(shield=True):
            await self.close()

    async def wait_released(self) -> None:
        """Return once the consumer closed the connection or saw it closed."""
        await self._released.wait()


@attrs.define(eq=False)
class Listener:
    """A bound WebSocket server; ``port`` is the real port (useful with ``port=0``)."""

    port: int
    incoming: trio.MemoryReceiveChannel[IncomingConnection]


def request_path(target: str) -> str:
    """The path part of an HTTP request target (query and fragment dropped)."""
    return target.split("?", 1)[0].split("#", 1)[0]


@asynccontextmanager
async def open_listener(port: int = DEFAULT_CLIENT_PORT, host: str = "0.0.0.0", *,
                        backlog: int = DEFAULT_BACKLOG) -> AsyncIterator[Listener]:
    """Serve until the block exits; then every socket still open is closed."""
    send, receive = trio.open_memory_channel[IncomingConnection](backlog)

    async def handle(request: WebSocketRequest) -> None:
        path = request_path(request.path)
        if path not in PATHS:
            log.info("rejecting %s: unknown path %r", request.remote, request.path)
            await request.reject(404)
            return
        ws = await request.accept()
        conn = IncomingConnection(ws, path, str(request.remote), str(request.remote.address))
        try:
            send.send_nowait(conn)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("dropping connection from %s: nobody is taking connections", conn.remote)
            return
        log.info("server connected from %s on %s", conn.remote, path)
        await conn.wait_released()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve_websocket(
            handle, host, port, None, max_message_size=MAX_MESSAGE_BYTES,
            message_queue_size=64, disconnect_timeout=CLOSE_TIMEOUT_S, task_status=task_status))
        async with send, receive:
            yield Listener(server.port, receive)
        nursery.cancel_scope.cancel()


__all__ = ["DEFAULT_CLIENT_PORT", "IncomingConnection", "Listener", "PATHS", "open_listener",
           "request_path"]
