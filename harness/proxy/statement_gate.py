"""Statement-level control of PostgreSQL connections through one proxy (race engine).

The gate parses both directions of every connection accepted while it is installed. A
*statement* is everything the client sends up to and including a Query ('Q'), Sync
('S') or FunctionCall ('F'); the server's ReadyForQuery ('Z') completes it. With that
the gate can hold a statement's first byte back until released, report each statement's
text and completion, and cut the connection before a statement or right after it was
sent (when the server starts answering it). An extended-protocol statement has a second
hold point: before its Sync. The server has then executed it inside its implicit
transaction but not committed it, so its locks and unique-index entries stay held for as
long as the gate likes: the window in which a concurrent writer must wait, or a writer
can die before its commit. When it holds a Sync the gate sends a Flush in its place, so
the server reports the statement's completion (or error) at once: `executed` then tells
that the statement ran, not merely that its bytes were sent. Statements are numbered
1, 2, 3... across the gate in the order their first byte arrives (`seq`), and per
connection (`index`).

Every public method may be called from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.proxy import wire_protocol as wp
from harness.proxy.errors import BadRequest, WaitTimeout
from harness.proxy.threadsafe import LoopOwner, owner_thread

if TYPE_CHECKING:
    from harness.proxy.connection import Connection

DEFAULT_WAIT = 30.0
TERMINATORS = frozenset("QSF")
FLUSH = b"H\x00\x00\x00\x04"
NOT_STATEMENT_START = frozenset("Xdcfp")  # terminate, COPY data/done/fail, auth replies


@dataclass(frozen=True)
class StatementEvent:
    """What the gate knows about one statement (a snapshot; times are time.monotonic())."""

    seq: int
    conn_id: int
    index: int
    text: str
    received_at: float
    forwarded_at: float | None  # its first byte reached the server
    sent_at: float | None  # all of it (Sync included) reached the server
    completed_at: float | None
    error: bool
    sqlstate: str | None
    tx_status: str | None  # from ReadyForQuery: 'I' idle, 'T' in transaction, 'E' failed
    command_tags: tuple[str, ...]
    held: bool
    sync_held: bool  # its Sync (and so its implicit commit) held back
    executes: bool  # an extended-protocol statement with an Execute: it has a Sync hold point
    executed: bool  # the server reported it complete or failed (before its Sync, if held)
    cut: bool  # the gate cut its connection before it completed
    closed: bool  # its connection ended (otherwise) before it completed

    @property
    def finished(self) -> bool:
        return self.completed_at is not None or self.cut or self.closed

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "conn_id": self.conn_id,
            "index": self.index,
            "text": self.text,
            "received_at": self.received_at,
            "forwarded_at": self.forwarded_at,
            "sent_at": self.sent_at,
            "completed_at": self.completed_at,
            "error": self.error,
            "sqlstate": self.sqlstate,
            "tx_status": self.tx_status,
            "command_tags": list(self.command_tags),
            "held": self.held,
            "sync_held": self.sync_held,
            "executes": self.executes,
            "executed": self.executed,
            "cut": self.cut,
            "closed": self.closed,
        }


@dataclass
class _Statement:
    seq: int
    conn: _GateConnection
    index: int
    received_at: float
    text: str = ""
    first_message_done: bool = False
    forwarded_at: float | None = None  # its first byte passed the gate
    executes: bool = False  # an Execute message was seen before its Sync
    flushed: bool = False  # a Flush was sent in place of its held Sync
    sent_at: float | None = None
    completed_at: float | None = None
    error: bool = False
    sqlstate: str | None = None
    tx_status: str | None = None
    tags: list[str] = field(default_factory=list)
    cut: bool = False
    closed: bool = False

    @property
    def finished(self) -> bool:
        return self.completed_at is not None or self.cut or self.closed

    def snapshot(self) -> StatementEvent:
        return StatementEvent(
            seq=self.seq,
            conn_id=self.conn.conn.id,
            index=self.index,
            text=self.text,
            received_at=self.received_at,
            forwarded_at=self.forwarded_at,
            sent_at=self.sent_at,
            completed_at=self.completed_at,
            error=self.error,
            sqlstate=self.sqlstate,
            tx_status=self.tx_status,
            command_tags=tuple(self.tags),
            held=self.conn.blocked_at is self,
            sync_held=self.conn.blocked_at_sync is self,
            executes=self.executes,
            executed=bool(self.tags) or self.error,
            cut=self.cut,
            closed=self.closed,
        )


@dataclass
class _Segment:
    """Frontend bytes not yet forwarded; split wherever a statement starts or ends."""

    data: bytes
    starts: _Statement | None = None
    ends: _Statement | None = None
    syncs: _Statement | None = None  # the segment begins this statement's Sync


class StatementGate:
    """Breakpoints, events and cuts for the PostgreSQL connections of one proxy."""

    def __init__(self, owner: LoopOwner) -> None:
        self._owner = owner
        self._statements: list[_Statement] = []
        self._breakpoints: set[int] = set()
        self._sync_breakpoints: set[int] = set()
        self._cut_after_send: set[int] = set()
        self._conns: list[_GateConnection] = []
        self._waiters: list[tuple[Callable[[], StatementEvent | None], asyncio.Future[Any]]] = []
        self._detached = False

    # -- control (synchronous, thread-safe) ---------------------------------------------
    @owner_thread
    def hold_before(self, seq: int) -> None:
        """Hold statement `seq` (gate-wide number) before its first byte reaches the server."""
        if seq < 1:
            raise BadRequest("statement numbers start at 1")
        if seq <= len(self._statements) and self._statements[seq - 1].forwarded_at is not None:
            raise BadRequest(f"statement {seq} already passed the gate")
        self._breakpoints.add(seq)

    @owner_thread
    def hold_next(self) -> int:
        """Hold the next statement to arrive, on any connection; returns its number."""
        seq = len(self._statements) + 1
        self._breakpoints.add(seq)
        return seq

    @owner_thread
    def hold_sync(self, seq: int) -> None:
        """Hold statement `seq`'s Sync: the server executes it but cannot commit it yet.

        Only extended-protocol statements have a Sync to hold; a simple query's bytes
        pass whole, so for those this breakpoint never triggers.
        """
        if seq < 1:
            raise BadRequest("statement numbers start at 1")
        if seq <= len(self._statements) and self._statements[seq - 1].sent_at is not None:
            raise BadRequest(f"statement {seq} was already sent whole")
        self._sync_breakpoints.add(seq)

    @owner_thread
    def release_sync(self, seq: int) -> None:
        """Let statement `seq`'s Sync through (held or not yet reached): it commits."""
        self._sync_breakpoints.discard(seq)
        self._pump_all()

    @owner_thread
    def release(self, seq: int | None = None) -> None:
        """Let statement `seq` through (held or not yet reached); by default every
        statement held right now. Armed breakpoints not yet reached stay armed."""
        if seq is None:
            self._breakpoints -= {c.blocked_at.seq for c in self._conns if c.blocked_at}
            self._sync_breakpoints -= {
                c.blocked_at_sync.seq for c in self._conns if c.blocked_at_sync
            }
        else:
            self._breakpoints.discard(seq)
        self._pump_all()

    @owner_thread
    def open(self) -> None:
        """Let everything through from now on, held or armed, and keep observing: unlike
        `detach`, statements still complete in `events`."""
        self._breakpoints.clear()
        self._sync_breakpoints.clear()
        self._pump_all()

    @owner_thread
    def cut(self) -> None:
        """Close every connection through this gate now, abruptly (RST both ways);
        held bytes are never sent."""
        for conn in list(self._conns):
            conn.cut()
        self._changed()

    @owner_thread
    def cut_after_send(self, seq: int | None = None) -> int:
        """Let statement `seq` (default: the one held now) through, and cut its
        connection as soon as the server starts answering it once it is wholly sent: the
        server executed it, the client never learns the outcome. A statement held at its
        Sync goes on to commit, and the cut comes with the answer to the commit. Returns
        the statement number."""
        if seq is None:
            held = [c.blocked_at.seq for c in self._conns if c.blocked_at]
            if len(held) != 1:
                raise BadRequest(f"cut_after_send needs exactly one held statement, not {held}")
            seq = held[0]
        if seq <= len(self._statements) and self._statements[seq - 1].sent_at is not None:
            raise BadRequest(f"statement {seq} was already sent")
        self._cut_after_send.add(seq)
        self._breakpoints.discard(seq)
        self._sync_breakpoints.discard(seq)
        self._pump_all()
        return seq

    @property
    def events(self) -> list[StatementEvent]:
        """Every statement seen so far, in `seq` order."""
        return self._owner.call(lambda: [s.snapshot() for s in self._statements])

    @property
    def held(self) -> list[StatementEvent]:
        """The statements held at the gate right now, before their start or their Sync."""
        return self._owner.call(
            lambda: [
                stmt.snapshot()
                for c in self._conns
                for stmt in (c.blocked_at, c.blocked_at_sync)
                if stmt is not None
            ]
        )

    @property
    def breakpoints(self) -> list[int]:
        return self._owner.call(lambda: sorted(self._breakpoints))

    # -- waiting (async, from any loop) -------------------------------------------------
    # The waits take a default bound (rather than relying on the caller's cancel scope)
    # because a mis-scheduled race must fail a run, not hang it.
    async def wait_held(
        self,
        seq: int | None = None,
        timeout: float | None = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> StatementEvent:
        """Until a statement (`seq`, or any) is held with its first message received."""
        return await self._owner.run(self._wait, lambda: self._find_held(seq), timeout, "held")

    async def wait_sent(
        self,
        seq: int,
        timeout: float | None = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> StatementEvent:
        """Until statement `seq` has wholly passed the gate (or ended)."""
        return await self._owner.run(
            self._wait,
            lambda: self._find(seq, lambda s: s.sent_at is not None or s.finished),
            timeout,
            f"statement {seq} to be sent",
        )

    async def wait_completed(
        self,
        seq: int,
        timeout: float | None = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> StatementEvent:
        """Until statement `seq` is finished: answered by ReadyForQuery, cut, or closed."""
        return await self._owner.run(
            self._wait,
            lambda: self._find(seq, lambda s: s.finished),
            timeout,
            f"statement {seq} to complete",
        )

    async def _wait(
        self,
        check: Callable[[], StatementEvent | None],
        timeout: float | None,  # noqa: ASYNC109
        what: str,
    ) -> StatementEvent:
        found = check()
        if found is not None:
            return found
        future: asyncio.Future[StatementEvent] = self._owner.loop.create_future()
        entry = (check, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}") from None
        finally:
            self._waiters.remove(entry)

    async def wait_sync_held(
        self,
        seq: int,
        timeout: float | None = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> StatementEvent:
        """Until statement `seq` is held before its Sync, or finished (no Sync to hold)."""
        return await self._owner.run(
            self._wait,
            lambda: self._find(seq, lambda s: s.conn.blocked_at_sync is s or s.finished),
            timeout,
            f"statement {seq} to be held before its Sync",
        )

    def _find_held(self, seq: int | None) -> StatementEvent | None:
        for conn in self._conns:
            stmt = conn.blocked_at
            if (
                stmt is not None
                and (seq is None or stmt.seq == seq)
                and (stmt.first_message_done or conn.eof_pending)
            ):
                return stmt.snapshot()
        return None

    def _find(self, seq: int, ready: Callable[[_Statement], bool]) -> StatementEvent | None:
        if seq <= len(self._statements) and ready(self._statements[seq - 1]):
            return self._statements[seq - 1].snapshot()
        return None

    # -- wiring (owner loop only) ------------------------------------------------------
    def attach(self, conn: Connection) -> None:
        """Parse a new connection from its first byte (called when it is accepted)."""
        if not self._detached:
            self._conns.append(_GateConnection(self, conn))

    @owner_thread
    def detach(self) -> None:
        """Release everything and stop parsing; live connections carry on unfiltered."""
        self._detached = True
        self._breakpoints.clear()
        for conn in list(self._conns):
            conn.go_transparent()
        self._changed()

    def _new_statement(self, conn: _GateConnection, index: int) -> _Statement:
        stmt = _Statement(len(self._statements) + 1, conn, index, time.monotonic())
        self._statements.append(stmt)
        return stmt

    def _is_breakpoint(self, stmt: _Statement) -> bool:
        return stmt.seq in self._breakpoints

    def _is_sync_breakpoint(self, stmt: _Statement) -> bool:
        return stmt.seq in self._sync_breakpoints

    def _cut_armed(self, stmt: _Statement) -> bool:
        return stmt.seq in self._cut_after_send

    def _forget(self, conn: _GateConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    def _pump_all(self) -> None:
        for conn in list(self._conns):
            conn.pump()
        self._changed()

    def _changed(self) -> None:
        for check, future in list(self._waiters):
            if not future.done():
                found = check()
                if found is not None:
                    future.set_result(found)


class _GateConnection:
    """Per-connection parser state; installed as the filter of both links."""

    def __init__(self, gate: StatementGate, conn: Connection) -> None:
        self.gate = gate
        self.conn = conn
        self.front = wp.MessageFramer(untyped=True, capture=frozenset("QPB"))
        self.back = wp.MessageFramer(untyped=False, capture=frozenset("ZEC"))
        self.segments: deque[_Segment] = deque()
        self.eof_pending = False
        self.blocked_at: _Statement | None = None
        self.blocked_at_sync: _Statement | None = None
        self.sync_pending: _Statement | None = None  # the next segment starts its Sync
        self.current: _Statement | None = None  # receiving, not yet terminated
        self.inflight: deque[_Statement] = deque()  # terminated, awaiting ReadyForQuery
        self.prepared: dict[str, str] = {}
        self.count = 0
        self.transparent = False
        conn.link("upstream").filter = _Frontend(self)
        conn.link("downstream").filter = _Backend(self)

    # frontend ---------------------------------------------------------------------------
    def on_frontend(self, data: bytes) -> None:
        try:
            events = self.front.feed(data)
        except wp.ProtocolError:
            self.segments.append(_Segment(data))
            self.go_transparent()
            return
        pos, starts = 0, None
        for kind, mtype, offset, body in events:
            if kind == wp.START and mtype and mtype not in NOT_STATEMENT_START:
                if self.current is None:
                    self._append(data[pos:offset], starts, None)
                    self.count += 1
                    self.current = self.gate._new_statement(self, self.count)
                    pos, starts = offset, self.current
                elif mtype == "S" and self.current.executes:
                    self._append(data[pos:offset], starts, None)
                    pos, starts = offset, None
                    self.sync_pending = self.current
            elif kind == wp.END:
                if mtype == "" and body is not None:
                    if wp.untyped_code(body) in (wp.SSL_REQUEST, wp.GSSENC_REQUEST):
                        self.back.pending_bytes += 1
                    continue
                stmt = self.current
                if stmt is None:
                    continue
                self._learn_text(stmt, mtype, body)
                stmt.first_message_done = True
                stmt.executes = stmt.executes or mtype == "E"
                if mtype in TERMINATORS:
                    self._append(data[pos:offset], starts, stmt)
                    pos, starts = offset, None
                    self.current = None
                    self.inflight.append(stmt)
        self._append(data[pos:], starts, None)
        self.pump()
        self.gate._changed()

    def _learn_text(self, stmt: _Statement, mtype: str, body: bytes | None) -> None:
        if body is None:
            return
        text = ""
        if mtype == "Q":
            text = wp.query_text(body)
        elif mtype == "P":
            name, text = wp.parse_statement(body)
            if name:
                self.prepared[name] = text
        elif mtype == "B":
            text = self.prepared.get(wp.bind_statement(body), "")
        if not stmt.text:  # a pipelined batch is named after its first statement
            stmt.text = text

    def _append(self, data: bytes, starts: _Statement | None, ends: _Statement | None) -> None:
        if not (data or starts is not None or ends is not None):
            return
        syncs = None
        if data and self.sync_pending is not None:  # the first bytes of the Sync
            syncs, self.sync_pending = self.sync_pending, None
        self.segments.append(_Segment(data, starts, ends, syncs))

    def on_frontend_eof(self) -> None:
        self.eof_pending = True
        self.pump()
        self.gate._changed()

    def pump(self) -> None:
        """Forward queued frontend bytes up to the first unreleased breakpoint."""
        link = self.conn.link("upstream")
        while self.segments:
            segment = self.segments[0]
            starts = segment.starts
            if starts is not None and not self.transparent and self.gate._is_breakpoint(starts):
                self.blocked_at, self.blocked_at_sync = starts, None
                return
            syncs = segment.syncs
            if syncs is not None and not self.transparent and self.gate._is_sync_breakpoint(syncs):
                self.blocked_at, self.blocked_at_sync = None, syncs
                if not syncs.flushed:  # make the server answer what it has executed so far
                    syncs.flushed = True
                    link.push(FLUSH)
                return
            self.segments.popleft()
            if starts is not None:
                starts.forwarded_at = time.monotonic()
            link.push(segment.data)
            if segment.ends is not None:
                segment.ends.sent_at = time.monotonic()
        self.blocked_at = self.blocked_at_sync = None
        if self.eof_pending:
            self.eof_pending = False
            link.push_eof()

    # backend ----------------------------------------------------------------------------
    def on_backend(self, data: bytes) -> None:
        try:
            events = self.back.feed(data)
        except wp.ProtocolError:
            self.go_transparent()
            self.conn.link("downstream").push(data)
            return
        for kind, mtype, offset, body in events:
            if kind == wp.BYTE:
                if body in (b"S", b"G"):  # TLS or GSS encryption accepted: opaque from now
                    self.go_transparent()
                    self.conn.link("downstream").push(data)
                    return
            elif kind == wp.START and self.inflight and self._cut_now(self.inflight[0]):
                self.conn.link("downstream").push(data[:offset])
                self.inflight[0].cut = True
                self.cut()
                self.gate._changed()
                return
            elif kind == wp.END and self.inflight and body is not None:
                self._learn_reply(mtype, body)
        self.conn.link("downstream").push(data)
        self.gate._changed()

    def _cut_now(self, head: _Statement) -> bool:
        """Armed, and wholly sent: answers to what came before its Sync do not count."""
        return head.sent_at is not None and self.gate._cut_armed(head)

    def _learn_reply(self, mtype: str, body: bytes) -> None:
        head = self.inflight[0]
        if mtype == "Z":
            self.inflight.popleft()
            head.completed_at = time.monotonic()
            head.tx_status = chr(body[0]) if body else None
        elif mtype == "E":
            head.error = True
            head.sqlstate = wp.error_fields(body).get("C")
        elif mtype == "C":
            head.tags.append(wp.command_tag(body))

    def on_backend_eof(self) -> None:
        """The server side is gone: nothing pending can complete any more."""
        self.conn.link("downstream").push_eof()
        self._end()

    # lifecycle --------------------------------------------------------------------------
    def cut(self) -> None:
        for stmt in self._unfinished():
            stmt.cut = True
        self.segments.clear()
        self.eof_pending = False
        self.conn.abort(reset=True)
        self._end()

    def _unfinished(self) -> list[_Statement]:
        pending = list(self.inflight) + ([self.current] if self.current else [])
        pending += [s.starts for s in self.segments if s.starts is not None]
        return [stmt for stmt in pending if not stmt.finished]

    def _end(self) -> None:
        for stmt in self._unfinished():
            stmt.closed = True
        self.inflight.clear()
        self.current = None
        self.segments.clear()
        self.blocked_at = self.blocked_at_sync = None
        self.gate._forget(self)
        self.gate._changed()

    def go_transparent(self) -> None:
        """Stop parsing (gate removed, encryption, or not PostgreSQL): flush and unhook."""
        self.transparent = True
        self.pump()
        self.conn.link("upstream").filter = None
        self.conn.link("downstream").filter = None
        self.gate._forget(self)


class _Frontend:
    def __init__(self, gc: _GateConnection) -> None:
        self._gc = gc

    def feed(self, data: bytes) -> None:
        self._gc.on_frontend(data)

    def feed_eof(self) -> None:
        self._gc.on_frontend_eof()


class _Backend:
    def __init__(self, gc: _GateConnection) -> None:
        self._gc = gc

    def feed(self, data: bytes) -> None:
        self._gc.on_backend(data)

    def feed_eof(self) -> None:
        self._gc.on_backend_eof()
