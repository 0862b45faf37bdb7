"""Statement-level control of PostgreSQL connections through one proxy (race engine).

The gate follows both directions of every connection accepted while it is installed,
through a `StatementTracker` per connection (statement_tracker.py says what one statement
is, across the shapes real clients send). Here is only the control: hold a statement's
first byte back until released, hold its Sync, report each statement's text and
completion, cut the connection before a statement or right after it was sent.

An extended-protocol statement has a second hold point: before its Sync. The server has
then executed it inside its implicit transaction but not committed it, so its locks and
unique-index entries stay held for as long as the gate likes: the window in which a
concurrent writer must wait, or a writer can die before its commit. When it holds a Sync
the gate sends a Flush in its place, so the server reports the statement's completion (or
error) at once: `executed` then tells that the statement ran, not merely that its bytes
were sent. Statements are numbered 1, 2, 3... across the gate in the order their first
byte arrives (`seq`), and per connection (`index`).

Operation scoping: statements whose first byte arrives between `begin_operation` and
`end_operation` belong to that operation; housekeeping (SET, RESET, pings...) and
prepare-only statements never are steps. In step mode (`hold_steps`) every step is held
at both hold points without the caller predicting its number.

Every public method may be called from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from harness.proxy.errors import BadRequest, WaitTimeout
from harness.proxy.statement_tracker import Mark, StatementTracker, Unit, UnknownWireShape
from harness.proxy.threadsafe import LoopOwner, owner_thread

if TYPE_CHECKING:
    from harness.proxy.connection import Connection

DEFAULT_WAIT = 30.0
FLUSH = b"H\x00\x00\x00\x04"
T = TypeVar("T")


@dataclass(frozen=True)
class StatementEvent:
    """What the gate knows about one statement (a snapshot; times are time.monotonic())."""

    seq: int
    conn_id: int
    index: int
    text: str
    received_at: float
    forwarded_at: float | None  # its first byte reached the server
    sent_at: float | None  # its first flight wholly reached the server: the client waits
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
    synced_at: float | None = None  # its Sync / Query / FunctionCall passed: wholly sent
    scheduled: bool = False  # a step of an operation (not housekeeping, not a prepare)
    housekeeping: bool = False  # SET, RESET, DISCARD, SHOW, a ping, a lone Sync
    operation: int | None = None  # the operation in flight when its first byte arrived
    flights: int = 0  # client flights so far (describe-first: 2)
    awaiting_server: bool = False  # between the flights of a describe-first statement
    texts: tuple[str, ...] = ()  # every statement of it (a pipeline: one per Execute)
    execute_count: int = 0
    answered_at: float | None = None  # the server's first answer to it (any flight) came
    received_whole: bool = False  # its Sync / Query reached the gate (perhaps held there)
    in_transaction: bool = False  # the one before it on its connection left a transaction
    # block open, so its Sync commits nothing

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
            "synced_at": self.synced_at,
            "completed_at": self.completed_at,
            "error": self.error,
            "sqlstate": self.sqlstate,
            "tx_status": self.tx_status,
            "command_tags": list(self.command_tags),
            "held": self.held,
            "sync_held": self.sync_held,
            "executes": self.executes,
            "execute_count": self.execute_count,
            "executed": self.executed,
            "cut": self.cut,
            "closed": self.closed,
            "scheduled": self.scheduled,
            "housekeeping": self.housekeeping,
            "operation": self.operation,
            "flights": self.flights,
            "awaiting_server": self.awaiting_server,
            "texts": list(self.texts),
            "answered_at": self.answered_at,
            "received_whole": self.received_whole,
            "in_transaction": self.in_transaction,
        }


@dataclass(eq=False)
class _Statement:
    seq: int
    conn: _GateConnection
    unit: Unit
    received_at: float
    operation: int | None
    forwarded_at: float | None = None  # its first byte passed the gate
    flushed: bool = False  # a Flush was sent in place of its held Sync
    sent_at: float | None = None
    synced_at: float | None = None
    answered_at: float | None = None
    completed_at: float | None = None
    cut: bool = False
    closed: bool = False

    @property
    def finished(self) -> bool:
        return self.completed_at is not None or self.cut or self.closed

    @property
    def in_transaction(self) -> bool:
        for earlier in reversed(self.conn.gate._statements[: self.seq - 1]):
            if earlier.conn is self.conn:
                return earlier.unit.tx_status in ("T", "E")
        return False

    @property
    def scheduled(self) -> bool:
        unit = self.unit
        return self.operation is not None and not (unit.housekeeping or unit.prepare_only)

    def snapshot(self) -> StatementEvent:
        unit = self.unit
        return StatementEvent(
            seq=self.seq,
            conn_id=self.conn.conn.id,
            index=unit.index,
            text=unit.text,
            received_at=self.received_at,
            forwarded_at=self.forwarded_at,
            sent_at=self.sent_at,
            completed_at=self.completed_at,
            error=unit.error,
            sqlstate=unit.sqlstate,
            tx_status=unit.tx_status,
            command_tags=tuple(unit.tags),
            held=self.conn.blocked_at is self,
            sync_held=self.conn.blocked_at_sync is self,
            executes=unit.execute_count > 0,
            executed=unit.executed,
            cut=self.cut,
            closed=self.closed,
            synced_at=self.synced_at,
            scheduled=self.scheduled,
            housekeeping=unit.housekeeping,
            operation=self.operation,
            flights=unit.flights,
            awaiting_server=unit.awaiting_server,
            texts=tuple(unit.texts),
            execute_count=unit.execute_count,
            answered_at=self.answered_at,
            received_whole=unit.synced,
            in_transaction=self.in_transaction,
        )


@dataclass
class _Segment:
    """Frontend bytes not yet forwarded; split wherever a hold point or boundary lies."""

    data: bytes
    starts: _Statement | None = None
    syncs: _Statement | None = None  # the segment begins this statement's Sync
    flight_ends: _Statement | None = None  # the segment ends a flight of this statement
    synced: _Statement | None = None  # the segment ends this statement's Sync or Query


class StatementGate:
    """Breakpoints, events and cuts for the PostgreSQL connections of one proxy."""

    def __init__(self, owner: LoopOwner) -> None:
        self._owner = owner
        self._statements: list[_Statement] = []
        self._breakpoints: set[int] = set()
        self._sync_breakpoints: set[int] = set()
        self._cut_after_send: set[int] = set()
        self._step_mode = False
        self._released: set[int] = set()  # step mode: let through before their first byte
        self._sync_released: set[int] = set()  # step mode: let through at their Sync
        self._operation_depth = 0
        self._operations = 0
        self._version = 0
        self._published: tuple[int, tuple[StatementEvent, ...]] = (0, ())
        """The version and the held statements as of the last change, replaced whole on the
        owner loop: a reader on another thread gets a consistent pair without a round trip
        to that loop (the race engine asks after every move)."""
        self._failure: UnknownWireShape | None = None
        self._conns: list[_GateConnection] = []
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
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
        if seq <= len(self._statements) and self._statements[seq - 1].synced_at is not None:
            raise BadRequest(f"statement {seq} was already sent whole")
        self._sync_breakpoints.add(seq)

    @owner_thread
    def hold_steps(self, enabled: bool = True) -> None:
        """Step mode: hold every step of an operation before its first byte and before its
        Sync, so the engine need not predict statement numbers (pools, pings and
        connect-time statements make them unpredictable). Release as usual."""
        self._step_mode = enabled
        self._pump_all()

    @owner_thread
    def begin_operation(self) -> int:
        """A store operation starts: statements arriving from now on are its steps."""
        self._operation_depth += 1
        if self._operation_depth == 1:
            self._operations += 1
        self._changed()
        return self._operations

    @owner_thread
    def end_operation(self) -> None:
        """The operation returned: later statements (a pool's RESET on return) are not steps."""
        if self._operation_depth == 0:
            raise BadRequest("end_operation without begin_operation")
        self._operation_depth -= 1
        self._changed()

    @owner_thread
    def release_sync(self, seq: int) -> None:
        """Let statement `seq`'s Sync through (held or not yet reached): it commits."""
        self._sync_breakpoints.discard(seq)
        self._sync_released.add(seq)
        self._pump_all()

    @owner_thread
    def release(self, seq: int | None = None) -> None:
        """Let statement `seq` through (held or not yet reached); by default every
        statement held right now. Armed breakpoints not yet reached stay armed."""
        if seq is None:
            for conn in self._conns:
                if conn.blocked_at is not None:
                    self._let_through(conn.blocked_at.seq)
                if conn.blocked_at_sync is not None:
                    self._sync_breakpoints.discard(conn.blocked_at_sync.seq)
                    self._sync_released.add(conn.blocked_at_sync.seq)
        else:
            self._let_through(seq)
        self._pump_all()

    def _let_through(self, seq: int) -> None:
        self._breakpoints.discard(seq)
        self._released.add(seq)

    @owner_thread
    def open(self) -> None:
        """Let everything through from now on, held or armed, step mode ended, and keep
        observing: unlike `detach`, statements still complete in `events`."""
        self._breakpoints.clear()
        self._sync_breakpoints.clear()
        self._step_mode = False
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
        if seq <= len(self._statements) and self._statements[seq - 1].synced_at is not None:
            raise BadRequest(f"statement {seq} was already sent")
        self._cut_after_send.add(seq)
        self._let_through(seq)
        self._sync_breakpoints.discard(seq)
        self._sync_released.add(seq)
        self._pump_all()
        return seq

    @property
    def events(self) -> list[StatementEvent]:
        """Every statement seen so far, in `seq` order."""
        return self._owner.call(lambda: [s.snapshot() for s in self._statements])

    @property
    def steps(self) -> list[StatementEvent]:
        """The statements that are steps of an operation, in `seq` order."""
        return self._owner.call(lambda: [s.snapshot() for s in self._statements if s.scheduled])

    @property
    def held(self) -> list[StatementEvent]:
        """The statements held at the gate right now, before their start or their Sync."""
        return list(self._published[1])

    @property
    def breakpoints(self) -> list[int]:
        return self._owner.call(lambda: sorted(self._breakpoints))

    @property
    def version(self) -> int:
        """Bumped on every change the gate sees; pair with `wait_changed`. Never newer
        than what `held` returns next."""
        return self._published[0]

    @property
    def failure(self) -> UnknownWireShape | None:
        """Why the gate stopped following a connection it could not understand, if it did."""
        return self._failure

    # -- waiting (async, from any loop) -------------------------------------------------
    # The waits take a default bound (rather than relying on the caller's cancel scope)
    # because a mis-scheduled race must fail a run, not hang it.
    async def wait_changed(
        self,
        since: int,
        timeout: float | None = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> int:
        """Until the gate's `version` is past `since`; returns the version then."""
        return await self._owner.run(
            self._wait,
            lambda: self._version if self._version > since else None,
            timeout,
            f"a change after version {since}",
        )

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
        """Until statement `seq`'s first flight has wholly passed the gate (or it ended):
        the client then waits for the server."""
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

    async def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float | None,  # noqa: ASYNC109
        what: str,
    ) -> T:
        found = check()
        if found is not None:
            return found
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[T] = self._owner.loop.create_future()
        entry = (check, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}") from None
        finally:
            self._waiters.remove(entry)

    def _find_held(self, seq: int | None) -> StatementEvent | None:
        for conn in self._conns:
            stmt = conn.blocked_at
            if (
                stmt is not None
                and (seq is None or stmt.seq == seq)
                and (stmt.unit.first_message_done or conn.eof_pending)
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
        self._step_mode = False
        for conn in list(self._conns):
            conn.go_transparent()
        self._changed()

    def _new_statement(self, conn: _GateConnection, unit: Unit) -> _Statement:
        operation = self._operations if self._operation_depth else None
        stmt = _Statement(len(self._statements) + 1, conn, unit, time.monotonic(), operation)
        self._statements.append(stmt)
        return stmt

    def _holds_before(self, stmt: _Statement) -> bool:
        if stmt.seq in self._breakpoints:
            return True
        return self._step_mode and stmt.scheduled and stmt.seq not in self._released

    def _undecided(self, stmt: _Statement) -> bool:
        """In step mode a statement waits at the gate until its first flight is in: only
        then does the gate know whether it is a step (a ping, a prepare-only Sync...)."""
        return (
            self._step_mode
            and stmt.operation is not None
            and stmt.seq not in self._released
            and not stmt.unit.first_flight_done
        )

    def _holds_sync(self, stmt: _Statement) -> bool:
        if stmt.seq in self._sync_breakpoints:
            return True
        return self._step_mode and stmt.scheduled and stmt.seq not in self._sync_released

    def _cut_armed(self, stmt: _Statement) -> bool:
        return stmt.seq in self._cut_after_send

    def _fail(self, failure: UnknownWireShape) -> None:
        if self._failure is None:
            self._failure = failure

    def _forget(self, conn: _GateConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    def _pump_all(self) -> None:
        for conn in list(self._conns):
            conn.pump()
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        held = tuple(
            stmt.snapshot()
            for c in self._conns
            for stmt in (c.blocked_at, c.blocked_at_sync)
            if stmt is not None
        )
        self._published = (self._version, held)
        for check, future in list(self._waiters):
            if future.done():
                continue
            found = check()
            if found is not None:
                future.set_result(found)
            elif self._failure is not None:
                future.set_exception(self._failure)


class _GateConnection:
    """One connection's tracker and forwarding queue; installed as both links' filter."""

    def __init__(self, gate: StatementGate, conn: Connection) -> None:
        self.gate = gate
        self.conn = conn
        self.tracker = StatementTracker()
        self.statements: dict[Unit, _Statement] = {}
        self.segments: deque[_Segment] = deque()
        self.eof_pending = False
        self.blocked_at: _Statement | None = None
        self.blocked_at_sync: _Statement | None = None
        self.transparent = False
        conn.link("upstream").filter = _Frontend(self)
        conn.link("downstream").filter = _Backend(self)

    # frontend ---------------------------------------------------------------------------
    def on_frontend(self, data: bytes) -> None:
        try:
            marks = self.tracker.feed_frontend(data)
        except UnknownWireShape as exc:
            self._give_up(exc, frontend=data)
            return
        bounds = sorted({0, len(data)} | {offset for offset, _, _ in marks})
        for start, end in itertools.pairwise(bounds):
            segment = _Segment(data[start:end])
            for offset, mark, unit in marks:
                if offset == start and mark is Mark.BEGIN:
                    self.statements[unit] = self.gate._new_statement(self, unit)
                stmt = self.statements.get(unit)  # None: its connection already ended
                if offset == start and mark is Mark.BEGIN:
                    segment.starts = stmt
                elif offset == start and mark is Mark.SYNC:
                    segment.syncs = stmt
                elif offset == end and mark is Mark.FLIGHT_END:
                    segment.flight_ends = stmt
                elif offset == end and mark is Mark.SYNCED:
                    segment.synced = stmt
            self.segments.append(segment)
        self.pump()
        self.gate._changed()

    def on_frontend_eof(self) -> None:
        self.eof_pending = True
        self.pump()
        self.gate._changed()

    def pump(self) -> None:
        """Forward queued frontend bytes up to the first unreleased hold point."""
        link = self.conn.link("upstream")
        while self.segments:
            segment = self.segments[0]
            if not self.transparent:
                starts, syncs = segment.starts, segment.syncs
                if starts is not None and self.gate._holds_before(starts):
                    self.blocked_at, self.blocked_at_sync = starts, None
                    return
                if starts is not None and not self.eof_pending and self.gate._undecided(starts):
                    self.blocked_at = self.blocked_at_sync = None
                    return
                if syncs is not None and self.gate._holds_sync(syncs):
                    self.blocked_at, self.blocked_at_sync = None, syncs
                    if not syncs.flushed:  # make the server answer what it has executed so far
                        syncs.flushed = True
                        link.push(FLUSH)
                    return
            self.segments.popleft()
            now = time.monotonic()
            if segment.starts is not None:
                segment.starts.forwarded_at = now
            link.push(segment.data)
            if segment.flight_ends is not None and segment.flight_ends.sent_at is None:
                segment.flight_ends.sent_at = now
            if segment.synced is not None:
                segment.synced.synced_at = now
        self.blocked_at = self.blocked_at_sync = None
        if self.eof_pending:
            self.eof_pending = False
            link.push_eof()

    # backend ----------------------------------------------------------------------------
    def on_backend(self, data: bytes) -> None:
        downstream = self.conn.link("downstream")
        try:
            marks = self.tracker.feed_backend(data)
        except UnknownWireShape as exc:
            self._give_up(exc)
            downstream.push(data)
            return
        now = time.monotonic()
        for offset, mark, unit in marks:
            stmt = self.statements.get(unit)
            if stmt is None:
                continue
            if mark is Mark.ANSWER and stmt.answered_at is None:
                stmt.answered_at = now
            if mark is Mark.ANSWER and stmt.synced_at is not None and self.gate._cut_armed(stmt):
                downstream.push(data[:offset])
                stmt.cut = True
                self.cut()
                self.gate._changed()
                return
            if mark is Mark.COMPLETED:
                stmt.completed_at = now
                del self.statements[unit]
        downstream.push(data)
        if self.tracker.encrypted:  # TLS or GSS encryption accepted: opaque from now
            self.go_transparent()
        self.gate._changed()

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
        return [stmt for stmt in self.statements.values() if not stmt.finished]

    def _end(self) -> None:
        for stmt in self._unfinished():
            stmt.closed = True
        self.statements.clear()
        self.segments.clear()
        self.blocked_at = self.blocked_at_sync = None
        self.gate._forget(self)
        self.gate._changed()

    def _give_up(self, failure: UnknownWireShape, frontend: bytes = b"") -> None:
        """A shape the tracker does not know: say so to every wait, then stop filtering."""
        self.gate._fail(failure)
        if frontend:
            self.segments.append(_Segment(frontend))
        self.go_transparent()
        self.gate._changed()

    def go_transparent(self) -> None:
        """Stop parsing (gate removed, encryption, unknown shape): flush and unhook."""
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
