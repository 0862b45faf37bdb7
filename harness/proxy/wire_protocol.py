"""Just enough of the PostgreSQL frontend/backend protocol (v3) to find message
boundaries in a byte stream split at arbitrary points.

Frontend: an untyped startup phase (Int32 length incl. itself, Int32 code, payload),
where SSLRequest/GSSENCRequest are answered by the server with one untyped byte, then
typed messages (Byte1 type, Int32 length incl. itself, body). Backend: typed messages,
except those one-byte answers.
"""

from __future__ import annotations

import struct

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit for a message
MAX_CAPTURE = 1 << 20  # longest body kept for inspection (longer ones are truncated)

START, END, BYTE = 0, 1, 2
# (kind, message type ("" for untyped), offset in the chunk, captured body or None).
# START: first byte of a message at offset; END: message ends just before offset;
# BYTE: a one-byte answer at offset, its value in the body.
Event = tuple[int, str, int, bytes | None]


class ProtocolError(Exception):
    """The stream is not the PostgreSQL protocol (or not at a boundary we understand)."""


class MessageFramer:
    """Incremental splitter of one direction of a PostgreSQL connection."""

    def __init__(self, *, untyped: bool, capture: frozenset[str]) -> None:
        self._untyped = untyped
        self._capture = capture
        self._header = bytearray()
        self._in_message = False
        self._in_header = False
        self._type = ""
        self._remaining = 0
        self._body: bytearray | None = None  # None: this message's body is not kept
        self.pending_bytes = 0  # one-byte answers expected before the next message

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        i, n = 0, len(data)
        while i < n:
            if not self._in_message:
                if self.pending_bytes:
                    self.pending_bytes -= 1
                    events.append((BYTE, "", i, data[i : i + 1]))
                    i += 1
                    continue
                self._in_message = self._in_header = True
                self._header.clear()
                self._type = "" if self._untyped else chr(data[i])
                events.append((START, self._type, i, None))
            if self._in_header:
                size = 4 if self._untyped else 5
                take = data[i : i + size - len(self._header)]
                self._header += take
                i += len(take)
                if len(self._header) < size:
                    break
                self._begin_body()
                if self._remaining == 0:
                    events.append(self._finish(i))
                continue
            take = min(self._remaining, n - i)
            if self._body is not None and len(self._body) < MAX_CAPTURE:
                self._body += data[i : i + min(take, MAX_CAPTURE - len(self._body))]
            i += take
            self._remaining -= take
            if self._remaining == 0:
                events.append(self._finish(i))
        return events

    def _begin_body(self) -> None:
        (length,) = struct.unpack_from("!i", self._header, len(self._header) - 4)
        if length < 4 or length > MAX_MESSAGE:
            raise ProtocolError(f"impossible message length {length}")
        self._in_header = False
        self._remaining = length - 4
        keep = self._untyped or self._type in self._capture
        self._body = bytearray() if keep else None

    def _finish(self, offset: int) -> Event:
        body = None if self._body is None else bytes(self._body)
        self._body = None
        self._in_message = False
        if self._untyped and body is not None:
            # After SSL/GSSENC requests (and a cancel, which ends the connection) another
            # untyped packet may follow; after a real startup packet, typed messages do.
            self._untyped = untyped_code(body) in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST)
        return (END, self._type, offset, body)


def untyped_code(body: bytes) -> int:
    """The request code (or protocol version) of a startup-phase packet."""
    return struct.unpack_from("!i", body)[0] if len(body) >= 4 else 0


def _cstrings(body: bytes, count: int) -> list[str]:
    parts = body.split(b"\0", count)[:count]
    parts += [b""] * (count - len(parts))  # a truncated capture still names what it has
    return [part.decode("utf-8", "replace") for part in parts]


def query_text(body: bytes) -> str:
    """Query ('Q'): the SQL string."""
    return _cstrings(body, 1)[0]


def parse_statement(body: bytes) -> tuple[str, str]:
    """Parse ('P'): (prepared statement name, SQL string)."""
    name, query = _cstrings(body, 2)
    return name, query


def bind_names(body: bytes) -> tuple[str, str]:
    """Bind ('B'): (portal name, prepared statement name it binds)."""
    portal, statement = _cstrings(body, 2)
    return portal, statement


def execute_portal(body: bytes) -> str:
    """Execute ('E'): the portal it runs."""
    return _cstrings(body, 1)[0]


def command_tag(body: bytes) -> str:
    """CommandComplete ('C'): e.g. 'INSERT 0 1'."""
    return _cstrings(body, 1)[0]


def error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse ('E'): field code -> value ('C' is the SQLSTATE, 'M' the message)."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields
