"""The statement tracker on byte traces of real clients and on generated message
sequences: no server, no proxy, no sockets (the whole file runs in well under 5 s)."""

from __future__ import annotations

import ast
import itertools
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.proxy.statement_tracker import Mark, StatementTracker, Unit, UnknownWireShape

TRACES = Path(__file__).resolve().parents[1] / "data" / "wire_traces"
CLIENTS = ["psycopg", "psycopg_pipeline", "asyncpg", "node_postgres", "postgres_js"]


def load_trace(name: str) -> dict[int, list[tuple[str, bytes]]]:
    """Connection number -> its chunks in order, each ('C' client or 'S' server, bytes)."""
    connections: dict[int, list[tuple[str, bytes]]] = {}
    for line in (TRACES / f"{name}.trace").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        tag, literal = line.split(" ", 1)
        connections.setdefault(int(tag[1:]), []).append((tag[0], ast.literal_eval(literal)))
    return connections


@dataclass
class Replay:
    units: list[Unit]
    marks: list[Mark]


def replay(chunks: list[tuple[str, bytes]]) -> Replay:
    tracker = StatementTracker()
    units: list[Unit] = []
    marks: list[Mark] = []
    for side, data in chunks:
        fed = tracker.feed_frontend(data) if side == "C" else tracker.feed_backend(data)
        for _, mark, unit in fed:
            marks.append(mark)
            if mark is Mark.BEGIN:
                units.append(unit)
    return Replay(units, marks)


def summary(unit: Unit) -> tuple[object, ...]:
    return (
        tuple(unit.texts),
        unit.execute_count,
        unit.flights,
        unit.synced,
        unit.completed,
        tuple(unit.tags),
        unit.sqlstate,
        unit.tx_status,
        unit.housekeeping,
        unit.prepare_only,
    )


def units_of(name: str) -> list[Unit]:
    return [unit for chunks in load_trace(name).values() for unit in replay(chunks).units]


@pytest.mark.parametrize("client", CLIENTS)
def test_every_statement_of_a_real_client_completes(client):
    units = units_of(client)
    assert units, f"the {client} trace has no statement"
    unfinished = [unit.text for unit in units if not (unit.synced and unit.completed)]
    assert unfinished == [], f"{client}: statements never answered: {unfinished}"


def test_psycopg_shapes():
    units = units_of("psycopg")
    by_text = {unit.text: unit for unit in units}
    assert by_text["SET lock_timeout = '5s'"].housekeeping
    multi = by_text["SELECT 1; SELECT 2"]
    assert (multi.tags, multi.execute_count) == (["SELECT 1", "SELECT 1"], 0)
    duplicate = [unit for unit in units if unit.sqlstate == "23505"]
    assert len(duplicate) == 1
    assert duplicate[0].executed
    prepares = [unit for unit in units if unit.prepare_only]
    assert [unit.text for unit in prepares] == ["UPDATE wire_trace SET v = $1 WHERE id = $2"]
    copy = [unit for unit in units if unit.text.startswith("COPY")]
    assert copy[0].tags == ["COPY 1"], "COPY data must continue the COPY statement"
    assert all(unit.flights == 1 for unit in units)


def test_psycopg_pipeline_is_one_statement_per_sync():
    units = units_of("psycopg_pipeline")
    batch = [unit for unit in units if unit.execute_count == 3]
    assert len(batch) == 1, [summary(unit) for unit in units]
    assert batch[0].texts == ["INSERT INTO wire_trace VALUES ($1, $2)"] * 3
    assert batch[0].tags == ["INSERT 0 1"] * 3
    updates = [unit for unit in units if unit.text.startswith("UPDATE")]
    assert [unit.execute_count for unit in updates] == [1, 1], "one unit per pipeline Sync"


def test_asyncpg_describes_first_then_reuses_its_prepared_statements():
    units = units_of("asyncpg")
    first_uses = [unit for unit in units if unit.flights == 2]
    assert {unit.text for unit in first_uses} == {
        "INSERT INTO wire_trace VALUES ($1, $2)",
        "SELECT v FROM wire_trace WHERE id = $1",
        "UPDATE wire_trace SET v = $1 WHERE id = $2",
    }
    inserts = [unit for unit in units if unit.text.startswith("INSERT")]
    assert [unit.flights for unit in inserts] == [2, 1, 1, 1], "cached after the first use"
    assert inserts[-1].execute_count == 2, "executemany: several Execute, one Sync"
    assert inserts[2].sqlstate == "23505"


def test_node_postgres_sends_one_flight_per_statement():
    units = units_of("node_postgres")
    assert all(unit.flights == 1 for unit in units)
    updates = [unit for unit in units if unit.text.startswith("UPDATE")]
    assert [unit.execute_count for unit in updates] == [1, 1]
    assert updates[1].texts == updates[0].texts, "a named statement's Bind is named by its Parse"


def test_postgres_js_describe_first_is_one_statement_in_two_flights():
    connections = load_trace("postgres_js")
    assert len(connections) >= 2, "the pool opened a second connection"
    units = units_of("postgres_js")
    two_flights = [unit for unit in units if unit.flights == 2]
    assert {unit.text for unit in two_flights} >= {
        "INSERT INTO wire_trace VALUES ($1, $2)",
        "UPDATE wire_trace SET v = $1 WHERE id = $2",
    }
    assert all(unit.execute_count == 1 and unit.completed for unit in two_flights)
    assert next(unit for unit in units if unit.text == "SELECT 1=1").housekeeping
    marks = [mark for chunks in connections.values() for mark in replay(chunks).marks]
    assert Mark.LATER_FLIGHT in marks


@pytest.mark.parametrize("client", CLIENTS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_traces_read_the_same_however_the_bytes_are_split(client, data):
    for chunks in load_trace(client).values():
        expected = [summary(unit) for unit in replay(chunks).units]
        resplit: list[tuple[str, bytes]] = []
        for side, chunk in chunks:
            cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(chunk) - 1)), max_size=4)))
            bounds = [0, *[c for c in cuts if c < len(chunk)], len(chunk)]
            resplit += [(side, chunk[a:b]) for a, b in itertools.pairwise(bounds)]
        assert [summary(unit) for unit in replay(resplit).units] == expected


# Generated conversations ---------------------------------------------------------------


def message(mtype: str, body: bytes = b"") -> bytes:
    return mtype.encode() + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


STARTUP = struct.pack("!i", 4 + 4 + 1) + struct.pack("!i", 196608) + b"\0"
READY = message("Z", b"I")
AUTH_OK = message("R", struct.pack("!i", 0))


def parse(name: str, sql: str) -> bytes:
    return message("P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind(portal: str, name: str) -> bytes:
    return message("B", cstr(portal) + cstr(name) + struct.pack("!hhh", 0, 0, 0))


def execute(portal: str = "") -> bytes:
    return message("E", cstr(portal) + struct.pack("!i", 0))


SYNC, FLUSH = message("S"), message("H")
DESCRIBE = message("D", b"S" + cstr(""))
TAG = message("C", cstr("UPDATE 1"))
ERROR = message("E", b"SERROR\0C23505\0Mduplicate\0\0")


@dataclass(frozen=True)
class Shape:
    """One statement as a client sends it, and the server's answers: flights alternate."""

    name: str
    flights: tuple[tuple[bytes, bytes], ...]  # (client bytes, server bytes) in turn
    execute_count: int
    fails: bool = False


def shape(kind: str, n: int, fails: bool) -> Shape:
    sql = f"UPDATE t SET v = {n}"
    answer = ERROR if fails else TAG
    if kind == "simple":
        return Shape(kind, ((message("Q", cstr(sql)), answer + READY),), 0, fails)
    if kind == "one_flight":
        client = parse("", sql) + bind("", "") + DESCRIBE + execute() + SYNC
        return Shape(kind, ((client, message("1") + message("2") + answer + READY),), 1, fails)
    if kind == "describe_first":
        first = parse(f"s{n}", sql) + DESCRIBE + FLUSH
        if fails:  # the Parse fails: the client sends its Sync and gives up
            return Shape(kind, ((first, ERROR), (SYNC, READY)), 0, True)
        second = bind("", f"s{n}") + execute() + SYNC
        return Shape(kind, ((first, message("1") + message("n")), (second, TAG + READY)), 1)
    if kind == "row_limited":  # asyncpg's fetchrow: Execute with a row limit
        client = bind("", f"s{n}") + execute() + SYNC
        rows = message("2") + message("D", b"\0\0") + (ERROR if fails else message("s"))
        return Shape(kind, ((client, rows + READY),), 1, fails)
    if kind == "pipeline":
        client = b"".join(parse("", sql) + bind("", "") + execute() for _ in range(3)) + SYNC
        return Shape(kind, ((client, (message("1") + message("2") + TAG) * 3 + READY),), 3)
    if kind == "prepare":
        client = parse(f"p{n}", sql) + DESCRIBE + SYNC
        return Shape(kind, ((client, message("1") + message("n") + READY),), 0)
    raise AssertionError(kind)


KINDS = ["simple", "one_flight", "describe_first", "row_limited", "pipeline", "prepare"]
shapes = st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), min_size=1, max_size=8).map(
    lambda drawn: [shape(kind, n, fails) for n, (kind, fails) in enumerate(drawn)]
)


@settings(max_examples=100, deadline=None)
@given(statements=shapes, split=st.integers(1, 7))
def test_generated_conversations(statements, split):
    tracker = StatementTracker()
    tracker.feed_frontend(STARTUP)
    tracker.feed_backend(AUTH_OK + READY)
    begun: list[Unit] = []
    for statement in statements:
        for client, server in statement.flights:
            for i in range(0, len(client), split):  # the client's bytes, in small pieces
                begun += [
                    u for _, m, u in tracker.feed_frontend(client[i : i + split]) if m is Mark.BEGIN
                ]
            tracker.feed_backend(server)
    assert len(begun) == len(statements)
    for unit, statement in zip(begun, statements, strict=True):
        assert unit.completed, statement.name
        assert unit.flights == len(statement.flights), statement.name
        assert unit.execute_count == statement.execute_count, statement.name
        assert unit.error == statement.fails, statement.name
        assert unit.executed == (statement.name != "prepare"), statement.name
        assert unit.prepare_only == (statement.name == "prepare")


@settings(max_examples=150, deadline=None)
@given(stream=st.binary(max_size=200), server=st.binary(max_size=200))
def test_any_bytes_give_marks_or_an_unknown_shape_never_another_error(stream, server):
    tracker = StatementTracker()
    tracker.feed_frontend(STARTUP)
    tracker.feed_backend(AUTH_OK + READY)
    try:
        tracker.feed_frontend(stream)
        tracker.feed_backend(server)
    except UnknownWireShape as exc:
        failure: HarnessError = exc
        assert str(failure)


def test_an_unknown_client_message_is_named():
    tracker = StatementTracker()
    tracker.feed_frontend(STARTUP)
    with pytest.raises(UnknownWireShape, match=r"client message type 'z' \(0x7a\)"):
        tracker.feed_frontend(message("z"))


def test_ready_for_query_before_the_sync_is_named():
    tracker = StatementTracker()
    tracker.feed_frontend(STARTUP)
    tracker.feed_backend(AUTH_OK + READY)
    tracker.feed_frontend(parse("", "SELECT 1") + FLUSH)
    with pytest.raises(UnknownWireShape, match="before its Sync or Query"):
        tracker.feed_backend(READY)
