"""What a "statement" is on one PostgreSQL connection, decided from its two byte streams.

No I/O and no clock here (the split of psycopg's `generators.py` / `waiting.py`): the
statement gate feeds each direction's bytes in and gets back *marks*, offsets inside the
chunk where a hold point or a boundary lies; holding, forwarding and waiting are the
gate's. Keeping the protocol knowledge apart lets it be tested on byte traces of real
clients, without a server.

A statement (`Unit`) is what the client sends up to a Query, Sync or FunctionCall and
the server answers with one ReadyForQuery. Clients reach that point in different shapes,
and all of them are one unit:

- simple Query, even a string of several statements (one ReadyForQuery);
- extended protocol in one flight: Parse/Bind/Describe/Execute/Sync;
- describe-first in two flights (postgres.js, pgx): Parse/Describe/Flush, the server
  answers, then Bind/Execute/Sync;
- a pipeline: several Execute before one Sync (psycopg pipeline mode, pgx batches);
- COPY: CopyData/CopyDone/CopyFail continue the statement in flight;
- error recovery: after an ErrorResponse the statement runs on to its Sync's answer.

A prepare with its own Sync (asyncpg: Parse/Describe/Sync, then Bind/Execute/Sync) is two
units; the first has no Execute (`prepare_only`). Anything the tracker does not know
raises `UnknownWireShape` naming it, so the gate can stop parsing and fail waits at once
instead of letting them time out.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from harness.errors import HarnessError
from harness.proxy import wire_protocol as wp

# Frontend (v3) typed messages: Bind, Close, Describe, Execute, FunctionCall, Flush,
# Parse, Query, Sync, Terminate, CopyData, CopyDone, CopyFail, and the authentication
# replies ('p': password, SASL).
FRONTEND_TYPES = frozenset("BCDEFHPQSXcdfp")
# Messages that never begin a statement: Terminate, COPY traffic, authentication replies.
NOT_STATEMENT_START = frozenset("Xcdfp")
TERMINATORS = frozenset("QSF")
# Backend (v3) typed messages.
BACKEND_TYPES = frozenset("123ACDEGHIKNRSTVWZcdnstv")

HOUSEKEEPING = re.compile(
    r"\s*(?:(?:SET|RESET|DISCARD|SHOW|LISTEN|UNLISTEN|DEALLOCATE)\b.*"
    r"|SELECT\s+(?:1|1\s*=\s*1|TRUE|'[^']*')"  # pings
    r"|SELECT\s+pg_advisory_unlock_all\(\)|CLOSE\s+ALL"  # asyncpg's reset on release
    r"|)\s*",
    re.IGNORECASE | re.DOTALL,
)


def is_housekeeping(text: str) -> bool:
    """Every statement of `text` is a session or pool chore (SET, RESET, a ping...)."""
    return all(HOUSEKEEPING.fullmatch(part) for part in text.split(";"))


class UnknownWireShape(HarnessError):
    """The connection did something the statement tracker does not understand."""


class Mark(Enum):
    """Where, inside a fed chunk, something about a unit happens."""

    BEGIN = "begin"  # its first byte: the hold point before it reaches the server
    LATER_FLIGHT = "later_flight"  # first byte of a flight after a Flush-ended one
    SYNC = "sync"  # its Sync starts (it has an Execute): the hold point before its commit
    FLIGHT_END = "flight_end"  # a flight (ended by Flush, Sync, Query, FunctionCall) ends
    SYNCED = "synced"  # its Sync, Query or FunctionCall ends: it is wholly sent
    ANSWER = "answer"  # (backend) first byte of a message answering it
    COMPLETED = "completed"  # (backend) its ReadyForQuery ends


Marked = tuple[int, Mark, "Unit"]


@dataclass(eq=False)
class Unit:
    """The wire facts about one statement, as the tracker learns them."""

    index: int  # 1, 2, 3... on this connection
    texts: list[str] = field(default_factory=list)
    first_message_done: bool = False
    has_parse: bool = False
    execute_count: int = 0
    flights: int = 0  # flights ended so far
    first_flight_done: bool = False
    awaiting_server: bool = False  # its last flight ended with a Flush; more will follow
    synced: bool = False
    tags: list[str] = field(default_factory=list)
    answered_executes: int = 0  # CommandComplete, EmptyQueryResponse or PortalSuspended
    error: bool = False
    sqlstate: str | None = None
    tx_status: str | None = None
    completed: bool = False

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def housekeeping(self) -> bool:
        """A session or pool chore (SET, RESET, DISCARD, SHOW, a ping, a lone Sync)."""
        return self.first_message_done and is_housekeeping(self.text)

    @property
    def prepare_only(self) -> bool:
        """A Parse sent in one flight with its own Sync and no Execute (a client's prepare
        step); known once its Sync is in."""
        return self.synced and self.has_parse and self.execute_count == 0 and self.flights == 1

    @property
    def executed(self) -> bool:
        """The server ran it (or failed it). A row-limited Execute (asyncpg's fetchrow) ends
        in PortalSuspended, not CommandComplete; its data-modifying part ran whole."""
        return self.answered_executes > 0 or self.error


class StatementTracker:
    """Both directions of one connection: frontend bytes in, marks out; backend likewise."""

    def __init__(self) -> None:
        self.front = wp.MessageFramer(untyped=True, capture=frozenset("QPBE"))
        self.back = wp.MessageFramer(untyped=False, capture=frozenset("ZECIs"))
        self.current: Unit | None = None  # receiving: its Sync/Query not yet seen
        self.pending: deque[Unit] = deque()  # begun, not yet answered by ReadyForQuery
        self.prepared: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.count = 0
        self.startup_ready = False  # the server's first ReadyForQuery (after startup)
        self.encrypted = False  # TLS or GSS accepted: the rest is opaque

    # -- frontend ------------------------------------------------------------------------
    def feed_frontend(self, data: bytes) -> list[Marked]:
        """Marks for a chunk of client bytes, in offset order."""
        try:
            events = self.front.feed(data)
        except wp.ProtocolError as exc:
            raise UnknownWireShape(f"client bytes are not PostgreSQL protocol v3: {exc}") from None
        marks: list[Marked] = []
        for kind, mtype, offset, body in events:
            if kind == wp.START and mtype:
                self._frontend_start(mtype, offset, marks)
            elif kind == wp.END:
                if not mtype:
                    if body is not None and wp.untyped_code(body) in (
                        wp.SSL_REQUEST,
                        wp.GSSENC_REQUEST,
                    ):
                        self.back.pending_bytes += 1
                    continue
                self._frontend_end(mtype, offset, body, marks)
        return marks

    def _frontend_start(self, mtype: str, offset: int, marks: list[Marked]) -> None:
        if mtype not in FRONTEND_TYPES:
            raise UnknownWireShape(
                f"client message type {mtype!r} (0x{ord(mtype):02x}) is not one the "
                "statement tracker knows (protocol v3 frontend messages only)"
            )
        unit = self.current
        if mtype in NOT_STATEMENT_START or (unit is None and mtype == "H"):
            return  # a Flush after a Sync (psycopg's pipeline) asks for nothing new
        if unit is None:
            self.count += 1
            unit = self.current = Unit(self.count)
            self.pending.append(unit)
            marks.append((offset, Mark.BEGIN, unit))
        elif unit.awaiting_server:
            marks.append((offset, Mark.LATER_FLIGHT, unit))
        unit.awaiting_server = False
        if mtype == "S" and unit.execute_count:
            marks.append((offset, Mark.SYNC, unit))

    def _frontend_end(
        self, mtype: str, offset: int, body: bytes | None, marks: list[Marked]
    ) -> None:
        unit = self.current
        if unit is None or mtype in NOT_STATEMENT_START:
            return
        self._learn(unit, mtype, body)
        unit.first_message_done = True
        if mtype in TERMINATORS or mtype == "H":
            unit.flights += 1
            unit.first_flight_done = True
            marks.append((offset, Mark.FLIGHT_END, unit))
        if mtype == "H":
            unit.awaiting_server = True
        elif mtype in TERMINATORS:
            unit.synced = True
            self.current = None
            marks.append((offset, Mark.SYNCED, unit))

    def _learn(self, unit: Unit, mtype: str, body: bytes | None) -> None:
        if body is None:
            return
        if mtype == "Q":
            unit.texts.append(wp.query_text(body))
        elif mtype == "P":
            unit.has_parse = True
            name, text = wp.parse_statement(body)
            self.prepared[name] = text
            if not unit.texts:  # named after its first statement until an Execute says more
                unit.texts.append(text)
        elif mtype == "B":
            portal, statement = wp.bind_names(body)
            self.portals[portal] = self.prepared.get(statement, "")
            if not unit.texts:
                unit.texts.append(self.portals[portal])
        elif mtype == "E":
            unit.execute_count += 1
            text = self.portals.get(wp.execute_portal(body), "")
            if unit.execute_count > 1:
                unit.texts.append(text)
            elif text:
                unit.texts[:1] = [text]

    # -- backend -------------------------------------------------------------------------
    def feed_backend(self, data: bytes) -> list[Marked]:
        """Marks for a chunk of server bytes; answers go to the oldest unanswered unit."""
        if self.encrypted:
            return []
        try:
            events = self.back.feed(data)
        except wp.ProtocolError as exc:
            raise UnknownWireShape(f"server bytes are not PostgreSQL protocol v3: {exc}") from None
        marks: list[Marked] = []
        for kind, mtype, offset, body in events:
            if kind == wp.BYTE:
                if body in (b"S", b"G"):
                    self.encrypted = True
                    return marks
            elif kind == wp.START:
                if mtype not in BACKEND_TYPES:
                    raise UnknownWireShape(
                        f"server message type {mtype!r} (0x{ord(mtype):02x}) is not one the "
                        "statement tracker knows"
                    )
                if self.pending and mtype not in "NSA":  # notices, parameters: asynchronous
                    marks.append((offset, Mark.ANSWER, self.pending[0]))
            elif kind == wp.END and body is not None:
                self._reply(mtype, body, offset, marks)
        return marks

    def _reply(self, mtype: str, body: bytes, offset: int, marks: list[Marked]) -> None:
        if not self.pending:
            if mtype == "Z" and not self.startup_ready:
                self.startup_ready = True
                return
            if mtype == "Z":
                raise UnknownWireShape(
                    "the server sent ReadyForQuery with no statement awaiting it"
                )
            return  # an error or tag before startup finished (failed authentication)
        head = self.pending[0]
        if mtype == "Z":
            if not head.synced:
                raise UnknownWireShape(
                    f"the server sent ReadyForQuery for statement {head.index} "
                    f"({head.text[:60]!r}) before its Sync or Query was seen"
                )
            self.pending.popleft()
            head.completed = True
            head.tx_status = chr(body[0]) if body else None
            self.startup_ready = True
            marks.append((offset, Mark.COMPLETED, head))
        elif mtype == "E":
            head.error = True
            head.sqlstate = wp.error_fields(body).get("C")
        elif mtype == "C":
            head.tags.append(wp.command_tag(body))
            head.answered_executes += 1
        elif mtype in ("I", "s"):
            head.answered_executes += 1
