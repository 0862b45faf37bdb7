"""One accepted client and its upstream connection: two sockets, two links.

Both sockets are read only once the whole connection is wired, so no byte can arrive
before the link that must carry it exists.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.proxy.link import Link
from harness.proxy.toxics import ToxicSpec

if TYPE_CHECKING:
    from harness.proxy.statement_gate import StatementGate

WRITE_HIGH = 1 << 20


class Side(asyncio.Protocol):
    """One socket of a connection: feeds the link that reads it, is written by the other."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.reader: Link | None = None
        self.peer: Side | None = None
        self.lost = False
        self._paused: set[str] = set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.pause_reading("setup")

    def data_received(self, data: bytes) -> None:
        assert self.reader is not None
        self.reader.feed(data)

    def eof_received(self) -> bool:
        assert self.reader is not None
        self.reader.feed_eof()
        return True  # keep the socket open: the link closes it after what it still holds

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.reader is not None:
            self.reader.feed_eof()
        self.conn.side_lost()

    def pause_writing(self) -> None:
        assert self.peer is not None
        self.peer.pause_reading("dst")

    def resume_writing(self) -> None:
        assert self.peer is not None
        self.peer.resume_reading("dst")

    # link.Endpoint
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as Toxiproxy's reset_peer does."""
        if self.transport is None or self.lost:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def pause_reading(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class Connection:
    """A client socket, its upstream socket and the two links between them."""

    def __init__(self, conn_id: int, on_finished: Callable[[Connection], None]) -> None:
        self.id = conn_id
        self.client = Side(self)
        self.server = Side(self)
        self.client.peer, self.server.peer = self.server, self.client
        self.up: Link | None = None
        self.down: Link | None = None
        self._on_finished = on_finished
        self._finished = False

    def start(
        self,
        upstream_toxics: list[ToxicSpec],
        downstream_toxics: list[ToxicSpec],
        gate: StatementGate | None,
    ) -> None:
        """Build both links, attach the gate if any, then start reading both sockets."""
        self.up = Link("upstream", self.client, self.server, upstream_toxics, self.abort)
        self.down = Link("downstream", self.server, self.client, downstream_toxics, self.abort)
        self.client.reader, self.server.reader = self.up, self.down
        if gate is not None:
            gate.attach(self)
        self.client.resume_reading("setup")
        self.server.resume_reading("setup")

    def link(self, stream: str) -> Link:
        link = self.up if stream == "upstream" else self.down
        assert link is not None
        return link

    def abort(self, reset: bool = False) -> None:
        """Close both sockets at once (disable, delete, gate cut); RST when `reset`."""
        for link in (self.up, self.down):
            if link is not None:
                link.close()
        for side in (self.client, self.server):
            if reset:
                side.reset()
            elif side.transport is not None:
                side.transport.abort()

    def side_lost(self) -> None:
        if self.client.lost and self.server.lost and not self._finished:
            self._finished = True
            for link in (self.up, self.down):
                if link is not None:
                    link.close()
            self._on_finished(self)
