"""One named proxy: a loopback listener, its live connections and its toxic chains.

Control operations are synchronous (binding is done with a plain socket) so that the
HTTP API, synchronous harness code and async tests can all drive them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from typing import Any

from harness.proxy.addresses import check_bind_allowed, format_host_port, split_host_port
from harness.proxy.connection import Connection
from harness.proxy.errors import Conflict, ListenError, NotFound
from harness.proxy.statement_gate import StatementGate
from harness.proxy.threadsafe import LoopOwner, owner_thread
from harness.proxy.toxics import (
    STREAMS,
    ToxicSpec,
    check_toxicity,
    check_type,
    merge_attributes,
    parse_stream,
)

log = logging.getLogger(__name__)


def normalize_listen(listen: str, allow_remote: bool) -> str:
    """`localhost:N` -> `127.0.0.1:N`, after the loopback policy check."""
    host, port = split_host_port(listen)
    check_bind_allowed(host, allow_remote)
    return format_host_port(host, port)


class Proxy:
    """Accepts clients on `listen` and relays each to its own connection to `upstream`."""

    def __init__(
        self, owner: LoopOwner, name: str, listen: str, upstream: str, *, allow_remote: bool
    ) -> None:
        self._owner = owner
        self._allow_remote = allow_remote
        self.name = name
        self._listen = normalize_listen(listen, allow_remote)
        self.upstream = upstream
        self.enabled = False
        self._toxics: dict[str, list[ToxicSpec]] = {stream: [] for stream in STREAMS}
        self._sock: socket.socket | None = None
        self._conns: set[Connection] = set()
        self._dials: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self._gate: StatementGate | None = None

    @property
    def listen(self) -> str:
        """The listen address, with the real port once bound (`127.0.0.1:0` resolved)."""
        return self._listen

    @property
    def port(self) -> int:
        return split_host_port(self._listen)[1]

    # -- lifecycle ---------------------------------------------------------------------
    @owner_thread
    def start(self) -> None:
        """Bind and accept; re-binding after a stop reuses the resolved port."""
        if self.enabled:
            return
        host, port = split_host_port(self._listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ListenError(f"listen tcp {self._listen}: {exc.strerror or exc}") from exc
        self._sock = sock
        self._listen = format_host_port(host, sock.getsockname()[1])
        self._owner.loop.add_reader(sock.fileno(), self._accept)
        self.enabled = True

    @owner_thread
    def stop(self) -> None:
        """Close the listener and every live connection; toxics are kept."""
        if not self.enabled:
            return
        self.enabled = False
        if self._sock is not None:
            self._owner.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._dials):
            task.cancel()
        for conn in list(self._conns):
            conn.abort()

    @owner_thread
    def update(
        self, *, listen: str | None = None, upstream: str | None = None, enabled: bool | None = None
    ) -> None:
        """Change fields (omitted ones keep their values); a new address restarts it."""
        new_listen = (
            self._listen if listen is None else normalize_listen(listen, self._allow_remote)
        )
        new_upstream = self.upstream if upstream is None else upstream
        want_enabled = self.enabled if enabled is None else enabled
        if new_listen != self._listen or new_upstream != self.upstream:
            self.stop()
            self._listen, self.upstream = new_listen, new_upstream
        if want_enabled:
            self.start()
        else:
            self.stop()

    # -- toxics ------------------------------------------------------------------------
    @owner_thread
    def add_toxic(
        self,
        type: str,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: dict[str, int] | None = None,
    ) -> ToxicSpec:
        """Add a toxic at the end of its stream's chain, live connections included."""
        stream = parse_stream(stream)
        name = name or f"{type}_{stream}"
        check_type(type)
        if self._find(name) is not None:
            raise Conflict("toxic already exists")
        spec = ToxicSpec(
            name=name,
            type=type,
            stream=stream,
            toxicity=check_toxicity(toxicity),
            attributes=merge_attributes(type, {}, attributes),
        )
        self._toxics[stream].append(spec)
        for conn in self._conns:
            conn.link(stream).add_toxic(spec)
        return spec

    @owner_thread
    def update_toxic(
        self, name: str, *, attributes: dict[str, int] | None = None, toxicity: float | None = None
    ) -> ToxicSpec:
        """Merge `attributes` into the toxic; toxicity kept unless given."""
        old = self.toxic(name)
        spec = dataclasses.replace(
            old,
            attributes=merge_attributes(old.type, old.attributes, attributes),
            toxicity=old.toxicity if toxicity is None else check_toxicity(toxicity),
        )
        chain = self._toxics[old.stream]
        chain[chain.index(old)] = spec
        for conn in self._conns:
            conn.link(old.stream).update_toxic(spec)
        return spec

    @owner_thread
    def remove_toxic(self, name: str) -> None:
        """Remove it everywhere; what it held is delivered onward at once."""
        spec = self.toxic(name)
        self._toxics[spec.stream].remove(spec)
        for conn in self._conns:
            conn.link(spec.stream).remove_toxic(name)

    @owner_thread
    def remove_all_toxics(self) -> None:
        for spec in self.toxics():
            self.remove_toxic(spec.name)

    @owner_thread
    def toxics(self) -> list[ToxicSpec]:
        """Upstream chain first, then downstream, each in insertion order."""
        return [spec for stream in STREAMS for spec in self._toxics[stream]]

    @owner_thread
    def toxic(self, name: str) -> ToxicSpec:
        spec = self._find(name)
        if spec is None:
            raise NotFound("toxic not found")
        return spec

    def _find(self, name: str) -> ToxicSpec | None:
        return next((s for s in self.toxics() if s.name == name), None)

    # -- statement gate ----------------------------------------------------------------
    @owner_thread
    def gate(self) -> StatementGate:
        """The proxy's statement gate, installed on first use; it sees connections
        accepted from then on (parsing must start at a connection's first byte)."""
        if self._gate is None:
            self._gate = StatementGate(self._owner)
        return self._gate

    @owner_thread
    def existing_gate(self) -> StatementGate:
        if self._gate is None:
            raise NotFound("gate not found")
        return self._gate

    @owner_thread
    def remove_gate(self) -> None:
        """Release everything held; live connections continue unparsed."""
        if self._gate is not None:
            self._gate.detach()
            self._gate = None

    # -- views -------------------------------------------------------------------------
    @owner_thread
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self._listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.toxics()],
        }

    # -- data path ---------------------------------------------------------------------
    def _accept(self) -> None:
        while self._sock is not None:
            try:
                client, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("accept failed on proxy %s", self.name)
                return
            client.setblocking(False)
            # asyncio only sets TCP_NODELAY when sock.proto is IPPROTO_TCP, and accepted
            # sockets report 0: without this, Nagle holds a small reply (a ReadyForQuery)
            # back until the client's delayed ACK, 40 ms later.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._owner.loop.create_task(self._serve(client))
            self._dials.add(task)
            task.add_done_callback(self._dials.discard)

    async def _serve(self, client: socket.socket) -> None:
        """Dial upstream for a new client; on failure close the client at once."""
        loop = self._owner.loop
        self._next_id += 1
        conn = Connection(self._next_id, self._conns.discard)
        try:
            host, port = split_host_port(self.upstream)
            await loop.create_connection(lambda: conn.server, host, port)
        except Exception:
            log.info("proxy %s: cannot reach upstream %s", self.name, self.upstream)
            client.close()
            return
        except asyncio.CancelledError:
            client.close()
            raise
        try:
            await loop.connect_accepted_socket(lambda: conn.client, client)
        except BaseException as exc:
            conn.abort()
            with contextlib.suppress(OSError):
                client.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.info("proxy %s: client vanished before it was wired: %s", self.name, exc)
            return
        self._conns.add(conn)
        conn.start(self._toxics["upstream"], self._toxics["downstream"], self._gate)
