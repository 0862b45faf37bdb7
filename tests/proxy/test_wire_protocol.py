"""Message framing and statement segmentation under arbitrary TCP chunking."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.proxy import wire_protocol as wp
from harness.proxy.statement_gate import StatementGate
from harness.proxy.threadsafe import LoopOwner


def typed(mtype: str, body: bytes) -> bytes:
    return mtype.encode() + struct.pack("!i", len(body) + 4) + body


def untyped(code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!ii", len(payload) + 8, code) + payload


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


SSL = untyped(wp.SSL_REQUEST)
STARTUP = untyped(196608, cstr("user") + cstr("postgres") + b"\0")


def simple(sql: str) -> bytes:
    return typed("Q", cstr(sql))


def extended(sql: str, name: str = "") -> bytes:
    parse = typed("P", cstr(name) + cstr(sql) + struct.pack("!h", 0))
    bind = typed("B", cstr("") + cstr(name) + struct.pack("!hhh", 0, 0, 0))
    return parse + bind + typed("D", b"P\0") + typed("E", b"\0" + b"\0\0\0\0") + typed("S", b"")


STATEMENTS = [
    simple("BEGIN"),
    extended("SELECT $1"),
    extended("UPDATE t SET x = 1"),
    simple("COMMIT"),
]
TEXTS = ["BEGIN", "SELECT $1", "UPDATE t SET x = 1", "COMMIT"]
FRONTEND = SSL + STARTUP + b"".join(STATEMENTS) + typed("X", b"")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def framed(data: bytes, cuts: list[int], **kwargs) -> list[tuple[int, str, bytes | None]]:
    framer = wp.MessageFramer(**kwargs)
    events = []
    for chunk in split(data, cuts):
        events += [(kind, mtype, body) for kind, mtype, _, body in framer.feed(chunk)]
    return events


@given(st.lists(st.integers(min_value=0), max_size=40))
def test_framing_is_independent_of_chunking(cuts):
    whole = framed(FRONTEND, [], untyped=True, capture=frozenset("QP"))
    assert framed(FRONTEND, cuts, untyped=True, capture=frozenset("QP")) == whole
    starts = [mtype for kind, mtype, _ in whole if kind == wp.START]
    assert starts == ["", "", "Q", "P", "B", "D", "E", "S", "P", "B", "D", "E", "S", "Q", "X"]
    bodies = [body for kind, mtype, body in whole if kind == wp.END and mtype == "Q"]
    assert [wp.query_text(b) for b in bodies] == ["BEGIN", "COMMIT"]


def test_backend_single_byte_answer_then_messages():
    framer = wp.MessageFramer(untyped=False, capture=frozenset("Z"))
    framer.pending_bytes = 1
    events = framer.feed(b"N" + typed("Z", b"I"))
    assert [(kind, mtype, body) for kind, mtype, _, body in events] == [
        (wp.BYTE, "", b"N"),
        (wp.START, "Z", None),
        (wp.END, "Z", b"I"),
    ]


def test_impossible_length_is_a_protocol_error():
    framer = wp.MessageFramer(untyped=False, capture=frozenset())
    try:
        framer.feed(b"Q\x00\x00\x00\x02")
    except wp.ProtocolError:
        return
    raise AssertionError("a length below 4 must be rejected")


class FakeLink:
    def __init__(self) -> None:
        self.filter = None
        self.data = bytearray()
        self.eof = False

    def push(self, data: bytes) -> None:
        self.data += data

    def push_eof(self) -> None:
        self.eof = True


class FakeConnection:
    id = 1

    def __init__(self) -> None:
        self.links = {"upstream": FakeLink(), "downstream": FakeLink()}

    def link(self, stream: str) -> FakeLink:
        return self.links[stream]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=30), st.integers(min_value=1, max_value=4))
def test_gate_holds_exactly_before_statement_k(cuts, k):
    async def scenario() -> None:
        gate = StatementGate(LoopOwner())
        conn = FakeConnection()
        gate.attach(conn)  # type: ignore[arg-type]
        gate.hold_before(k)
        up = conn.links["upstream"]
        for chunk in split(FRONTEND, cuts):
            up.filter.feed(chunk)
        prefix = SSL + STARTUP + b"".join(STATEMENTS[: k - 1])
        assert bytes(up.data) == prefix  # statement k held at its first byte
        assert [e.text for e in gate.events] == TEXTS
        assert [e.seq for e in gate.held] == [k]
        assert all(e.sent_at is not None for e in gate.events[: k - 1])
        assert gate.events[k - 1].sent_at is None
        gate.release()
        assert bytes(up.data) == FRONTEND
        assert gate.held == []
        assert all(e.sent_at is not None for e in gate.events)

    asyncio.run(scenario())
