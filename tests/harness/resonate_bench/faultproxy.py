"""A loopback TCP proxy that can freeze the link, with a tap on the WebSocket messages.

Put it between a player and a server (127.0.0.1 only) to inject network faults:

* :meth:`FaultProxy.freeze` — every byte in either direction is held (the proxy stops
  reading, so TCP back-pressure builds up on both sides, as on a stalled link) until
  :meth:`FaultProxy.thaw`; nothing is lost or reordered.  Connections stay open.
* :meth:`FaultProxy.cut` — close every open connection (both sides see a reset-free
  EOF), as when a NAT or an access point forgets the flow.

The tap parses the WebSocket frames going through (plaintext ``ws://`` only; it gives
up on a connection whose frames are compressed) and records every *text* message with
the local time (``CLOCK_MONOTONIC_RAW`` ns) at which it was forwarded:
``proxy.messages("up")`` are the player's (``client/…``), ``"down"`` the server's.

In-process::

    async with trio.open_nursery() as n:
        proxy = FaultProxy(upstream_port=srv.port)
        port = await n.start(proxy.serve)
        ...  # the player dials ws://127.0.0.1:{port}/sendspin
        proxy.freeze(); await trio.sleep(5); proxy.thaw()
        n.cancel_scope.cancel()

As a process (commands on stdin: ``freeze``, ``thaw``, ``cut``; events as JSON lines)::

    python -m resonate_bench.faultproxy --upstream 8927 [--port 0]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from typing import Literal

import attrs
import trio

HOST = "127.0.0.1"
READ_SIZE = 65536
TAP_MAX_MESSAGE = 1 << 20  # text messages longer than this are recorded truncated

Direction = Literal["up", "down"]


def raw_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


@attrs.frozen
class TappedMessage:
    direction: Direction
    forwarded_ns: int
    text: str

    def json(self) -> dict | None:
        try:
            obj = json.loads(self.text)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None


class WebSocketTap:
    """Incremental parser of one direction of a WebSocket connection (HTTP upgrade
    first, then frames); calls ``on_text`` with each complete text message."""

    def __init__(self, on_text) -> None:
        self._buf = bytearray()
        self._in_http = True
        self._text: bytearray | None = None
        self._on_text = on_text
        self._skip = 0
        self.broken: str | None = None

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        if self._skip:  # the rest of a frame we do not keep (binary audio)
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data
        if self._in_http:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > 65536:
                    self.broken = "no end of HTTP headers"
                return
            headers = bytes(self._buf[:end]).lower()
            if b"sec-websocket-extensions" in headers and b"deflate" in headers:
                self.broken = "compressed frames"
                return
            del self._buf[:end + 4]
            self._in_http = False
        while not self.broken and not self._skip and self._frame():
            pass

    def _frame(self) -> bool:
        """Consume one frame (or the header of one to skip); False: need more bytes."""
        b = self._buf
        if len(b) < 2:
            return False
        fin, rsv, opcode = b[0] & 0x80, b[0] & 0x70, b[0] & 0x0F
        masked, length = b[1] & 0x80, b[1] & 0x7F
        pos = 2
        if length == 126:
            if len(b) < 4:
                return False
            length, pos = struct.unpack_from(">H", b, 2)[0], 4
        elif length == 127:
            if len(b) < 10:
                return False
            length, pos = struct.unpack_from(">Q", b, 2)[0], 10
        mask = b""
        if masked:
            if len(b) < pos + 4:
                return False
            mask, pos = bytes(b[pos:pos + 4]), pos + 4
        if rsv:
            self.broken = "compressed frames"
            return False
        keep = opcode == 1 or (opcode == 0 and self._text is not None)
        if not keep:
            del b[:pos]
            n = min(length, len(b))
            del b[:n]
            self._skip = length - n
            return True
        if len(b) < pos + length:
            return False
        payload = bytes(b[pos:pos + length])
        del b[:pos + length]
        if mask:
            payload = _unmask(payload, mask)
        if opcode == 1:
            self._text = bytearray()
        if len(self._text) < TAP_MAX_MESSAGE:
            self._text += payload
        if fin:
            text, self._text = bytes(self._text), None
            self._on_text(text.decode("utf-8", "replace"))
        return True


def _unmask(payload: bytes, mask: bytes) -> bytes:
    import numpy as np

    if not payload:
        return payload
    data = np.frombuffer(payload, np.uint8)
    key = np.resize(np.frombuffer(mask, np.uint8), data.size)
    return (data ^ key).tobytes()


class FaultProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = HOST, tap: bool = True) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port: int | None = None
        self.tap = tap
        self.tapped: list[TappedMessage] = []
        self.connections = 0
        self._thawed = trio.Event()
        self._thawed.set()
        self._cut_scopes: set[trio.CancelScope] = set()
        self.frozen_at_ns: int | None = None

    # -- control --------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def freeze(self) -> None:
        if not self.frozen:
            self._thawed = trio.Event()
            self.frozen_at_ns = raw_ns()

    def thaw(self) -> None:
        self._thawed.set()

    def cut(self) -> None:
        for scope in list(self._cut_scopes):
            scope.cancel()

    def messages(self, direction: Direction = "up", type_: str | None = None) -> list[TappedMessage]:
        out = [m for m in self.tapped if m.direction == direction]
        if type_ is not None:
            out = [m for m in out if (m.json() or {}).get("type") == type_]
        return out

    # -- serving ----------------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0 if self.port is None else self.port, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._cut_scopes.add(scope)
            try:
                async with client, server, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server, "up", nursery.cancel_scope)
                    nursery.start_soon(self._pipe, server, client, "down", nursery.cancel_scope)
            finally:
                self._cut_scopes.discard(scope)

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, direction: Direction,
                    both: trio.CancelScope) -> None:
        tap = WebSocketTap(lambda text: self.tapped.append(
            TappedMessage(direction, raw_ns(), text))) if self.tap else None
        try:
            while True:
                data = await src.receive_some(READ_SIZE)
                if not data:
                    break
                await self._thawed.wait()  # frozen: hold this read, read nothing more
                await dst.send_all(data)
                if tap is not None:
                    tap.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            both.cancel()


async def _main(args: argparse.Namespace) -> None:
    proxy = FaultProxy(args.upstream, tap=args.tap)
    if args.port:
        proxy.port = args.port

    def emit(**fields) -> None:
        print(json.dumps(fields), flush=True)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        emit(event="ready", port=port, upstream=args.upstream)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buf = b""
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                cmd = line.strip().decode()
                if cmd in ("freeze", "thaw", "cut"):
                    getattr(proxy, cmd)()
                    emit(event=cmd, t_raw_ns=raw_ns())
                elif cmd == "messages":
                    for m in proxy.tapped:
                        emit(event="message", direction=m.direction, t_raw_ns=m.forwarded_ns,
                             text=m.text[:2000])
                elif cmd:
                    emit(event="error", message=f"unknown command {cmd!r}")
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="loopback TCP proxy with freeze/thaw/cut")
    p.add_argument("--upstream", type=int, required=True, help="server port on 127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="listening port (0: any free one)")
    p.add_argument("--no-tap", dest="tap", action="store_false")
    trio.run(_main, p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
