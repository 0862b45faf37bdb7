"""The statement gate (harness extension) with psycopg through the proxy to the local
PostgreSQL. Every ordering is by control: gate waits, held statements, row locks."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import psycopg
import pytest

from examples.asyncpg_store.store import connect_kwargs
from harness.proxy import ProxyServer, StatementEvent, StatementGate, WaitTimeout
from harness.proxy.errors import BadRequest
from harness.proxy.statement_tracker import UnknownWireShape

pytestmark = pytest.mark.anyio


@pytest.fixture
def table(pg_dsn):
    name = f"gate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, who text)")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def pg_proxy(ours, pg_upstream):
    name = f"pg-{uuid.uuid4().hex[:10]}"
    proxy = ours.create_proxy(name, pg_upstream)
    yield proxy
    ours.registry.delete_proxy(name)


@pytest.fixture
def direct(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        yield conn


async def connect(proxy, dsn_through, autocommit=False, **params) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        dsn_through(proxy.port, **params), autocommit=autocommit
    )


async def test_simple_protocol_boundaries(pg_proxy, dsn_through):
    gate = pg_proxy.gate()
    async with await connect(pg_proxy, dsn_through) as conn:
        await conn.execute("SELECT 1")
        await conn.execute("SELECT 2; SELECT 3")
        await conn.commit()
    events = gate.events
    assert [e.text for e in events] == ["BEGIN", "SELECT 1", "SELECT 2; SELECT 3", "COMMIT"]
    assert [e.tx_status for e in events] == ["T", "T", "T", "I"]
    assert events[2].command_tags == ("SELECT 1", "SELECT 1")
    assert all(e.received_at <= e.sent_at <= e.completed_at for e in events)
    assert [e.seq for e in events] == [1, 2, 3, 4] == [e.index for e in events]
    assert len({e.conn_id for e in events}) == 1
    assert not any(e.error or e.cut or e.closed or e.held for e in events)


async def test_extended_protocol_boundaries(pg_proxy, dsn_through):
    gate = pg_proxy.gate()
    async with await connect(pg_proxy, dsn_through, autocommit=True) as conn:
        assert await (await conn.execute("SELECT %s::int", [41])).fetchone() == (41,)
        for value in (1, 2):  # prepared: Parse/Describe/Sync once, then Bind/Execute/Sync
            await conn.execute("SELECT %s::int + 1", [value], prepare=True)
    events = gate.events
    assert [e.text for e in events] == ["SELECT $1::int"] + ["SELECT $1::int + 1"] * 3
    assert [e.command_tags for e in events] == [("SELECT 1",), (), ("SELECT 1",), ("SELECT 1",)]
    assert all(e.completed_at is not None and e.tx_status == "I" for e in events)


async def test_error_reported(pg_proxy, dsn_through):
    gate = pg_proxy.gate()
    async with await connect(pg_proxy, dsn_through) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
        await conn.rollback()
    begin, failed, rollback = gate.events
    assert failed.error
    assert failed.sqlstate == "22012"
    assert failed.tx_status == "E"
    assert not begin.error
    assert rollback.tx_status == "I"


async def test_hold_before_k_reaches_server_only_on_release(pg_proxy, dsn_through, table, direct):
    gate = pg_proxy.gate()
    app = f"held-{uuid.uuid4().hex[:8]}"
    async with await connect(pg_proxy, dsn_through, autocommit=True, application_name=app) as conn:
        await conn.execute("SELECT 'before'")
        gate.hold_before(2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.execute, f"INSERT INTO {table} VALUES (1, 'a')")
            held = await gate.wait_held()
            assert (held.seq, held.text, held.held) == (
                2,
                f"INSERT INTO {table} VALUES (1, 'a')",
                True,
            )
            assert gate.held == [held]
            # The server has not seen it: no row, and the backend's last query is the first.
            assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            state = direct.execute(
                "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", [app]
            ).fetchone()
            assert state == ("idle", "SELECT 'before'")
            gate.release()
            done = await gate.wait_completed(2)
        assert done.command_tags == ("INSERT 0 1",)
        assert done.tx_status == "I"
        assert held.received_at < done.sent_at <= done.completed_at
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


async def test_hold_rejects_passed_statement_and_bounds_waits(pg_proxy, dsn_through):
    gate = pg_proxy.gate()
    async with await connect(pg_proxy, dsn_through, autocommit=True) as conn:
        await conn.execute("SELECT 1")
        with pytest.raises(BadRequest):
            gate.hold_before(1)
        with pytest.raises(WaitTimeout):
            await gate.wait_held(timeout=0.05)
        with pytest.raises(TimeoutError):
            await gate.wait_completed(99, timeout=0.05)


async def test_cut_mid_transaction_rolls_back(pg_proxy, dsn_through, table, direct):
    gate = pg_proxy.gate()
    conn = await connect(pg_proxy, dsn_through)
    try:
        await conn.execute(f"INSERT INTO {table} VALUES (1, 'doomed')")  # BEGIN + INSERT
        commit = gate.hold_next()
        async with anyio.create_task_group() as tg:

            async def committing() -> None:
                with pytest.raises(psycopg.OperationalError):
                    await conn.commit()

            tg.start_soon(committing)
            assert (await gate.wait_held(commit)).text == "COMMIT"
            gate.cut()
        event = await gate.wait_completed(commit)
        assert event.cut
        assert event.sent_at is None
        assert event.completed_at is None
    finally:
        await conn.close()
    # Same key: waits on the doomed row lock while its backend lives, succeeds once it
    # rolled back; a unique violation here would mean the cut transaction committed.
    direct.execute(f"INSERT INTO {table} VALUES (1, 'survivor')")
    assert direct.execute(f"SELECT who FROM {table}").fetchall() == [("survivor",)]


async def test_cut_after_commit_sent_before_reply(pg_proxy, dsn_through, table, direct):
    gate = pg_proxy.gate()
    conn = await connect(pg_proxy, dsn_through)
    try:
        await conn.execute(f"INSERT INTO {table} VALUES (7, 'committed')")
        commit = gate.hold_next()
        async with anyio.create_task_group() as tg:

            async def committing() -> None:
                with pytest.raises(psycopg.OperationalError):
                    await conn.commit()

            tg.start_soon(committing)
            await gate.wait_held(commit)
            assert gate.cut_after_send() == commit
        event = await gate.wait_completed(commit)
        assert event.cut
        assert event.sent_at is not None
        assert event.completed_at is None
    finally:
        await conn.close()
    assert direct.execute(f"SELECT id, who FROM {table}").fetchall() == [(7, "committed")]


async def test_two_actors_run_in_the_order_the_gates_choose(
    ours, pg_upstream, dsn_through, table, direct
):
    proxies = {
        who: ours.create_proxy(f"actor-{who}-{uuid.uuid4().hex[:6]}", pg_upstream)
        for who in ("a", "b")
    }
    try:
        gates: dict[str, StatementGate] = {who: p.gate() for who, p in proxies.items()}
        conns = {who: await connect(p, dsn_through, autocommit=True) for who, p in proxies.items()}
        for gate in gates.values():
            gate.hold_next()
        async with anyio.create_task_group() as tg:
            for who, conn in conns.items():
                sql = f"INSERT INTO {table} SELECT coalesce(max(id), 0) + 1, %s FROM {table}"
                tg.start_soon(conn.execute, sql, [who])
            for gate in gates.values():
                await gate.wait_held()
            for who in ("b", "a"):  # b first, then a, whatever the scheduler would do
                gates[who].release()
                await gates[who].wait_completed(1)
        for conn in conns.values():
            await conn.close()
    finally:
        for proxy in proxies.values():
            ours.registry.delete_proxy(proxy.name)
    assert direct.execute(f"SELECT id, who FROM {table} ORDER BY id").fetchall() == [
        (1, "b"),
        (2, "a"),
    ]


async def test_core_api_on_the_callers_own_loop(pg_upstream, dsn_through):
    """No thread: the registry on the test's loop, gate waits awaited directly."""
    registry = ProxyServer()
    try:
        proxy = registry.create_proxy("same-loop", pg_upstream)
        gate = proxy.gate()
        gate.hold_before(1)
        async with await connect(proxy, dsn_through, autocommit=True) as conn:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.execute, "SELECT 'on my loop'")
                assert (await gate.wait_held(1)).text == "SELECT 'on my loop'"
                gate.release(1)
            assert (await gate.wait_completed(1)).tx_status == "I"
        proxy.remove_gate()
        assert proxy.toxics() == []
    finally:
        registry.close()


def test_gate_over_http(api, ours, pg_upstream, dsn_through):
    proxy = api.create_proxy(pg_upstream)
    base = f"/proxies/{proxy['name']}/gate"
    assert api.get(base).status_code == 404
    assert api.post(base, json={"hold_before": [2]}).json()["breakpoints"] == [2]
    port = int(proxy["listen"].rsplit(":", 1)[1])
    results: list[object] = []
    with psycopg.connect(dsn_through(port), autocommit=True) as conn:
        conn.execute("SELECT 'one'")
        worker = threading.Thread(
            target=lambda: results.append(conn.execute("SELECT 'two'").fetchone())
        )
        worker.start()
        held = api.post(f"{base}/wait", json={"for": "held", "timeout_ms": 5000})
        assert held.status_code == 200
        assert held.json()["text"] == "SELECT 'two'"
        assert [e["text"] for e in api.get(base).json()["held"]] == ["SELECT 'two'"]
        assert results == []
        assert api.post(f"{base}/release", json={}).status_code == 200
        done = api.post(f"{base}/wait", json={"for": "completed", "statement": 2})
        worker.join(5)
        assert results == [("two",)]
        assert done.json()["completed_at"] is not None
    events = api.get(f"{base}/events").json()
    assert [e["text"] for e in events] == ["SELECT 'one'", "SELECT 'two'"]
    timeout = api.post(f"{base}/wait", json={"for": "completed", "statement": 9, "timeout_ms": 20})
    assert timeout.status_code == 408
    assert timeout.json()["status"] == 408
    assert api.post(f"{base}/wait", json={"for": "nonsense"}).status_code == 400
    assert api.post(f"{base}/hold", json={"before": 1}).status_code == 400
    assert api.delete(base).status_code == 204
    assert api.get(f"{base}/events").status_code == 404


async def _blockers(direct: psycopg.Connection, application_name: str) -> list[int]:
    row = direct.execute(
        "SELECT pg_blocking_pids(pid) FROM pg_stat_activity WHERE application_name = %s",
        [application_name],
    ).fetchone()
    return row[0] if row else []


async def _wait_blocked(direct: psycopg.Connection, application_name: str) -> None:
    with anyio.fail_after(10):
        while not await _blockers(direct, application_name):  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.parametrize("winner_ends", ["commits", "is cut"])
async def test_sync_hold_keeps_the_statement_uncommitted(
    pg_proxy, pg_dsn, dsn_through, table, direct, winner_ends
):
    """Executed but not committed: a second insert of the key waits on it, then learns its fate."""
    gate = pg_proxy.gate()
    winner = await connect(pg_proxy, dsn_through, autocommit=True, application_name="winner")
    waiter = await psycopg.AsyncConnection.connect(
        pg_dsn, autocommit=True, application_name=f"waiter-{table}"
    )  # not through the gate: cutting the winner's connections must spare it;
    # named after the table: another test's waiter on the same server is not this one
    gate.hold_sync(1)
    outcomes: dict[str, object] = {}

    async def insert(who: str, conn: psycopg.AsyncConnection) -> None:
        try:
            await conn.execute(f"INSERT INTO {table} VALUES (1, %s)", [who])
            outcomes[who] = "inserted"
        except psycopg.Error as exc:
            outcomes[who] = type(exc).__name__

    async with anyio.create_task_group() as tg:
        tg.start_soon(insert, "winner", winner)
        held = await gate.wait_sync_held(1)
        assert held.sync_held
        assert held.executes
        assert held.sent_at is None
        version = gate.version
        while not (held := gate.events[0]).executed:  # its Execute may still be on its way
            version = await gate.wait_changed(version)
        assert held.sync_held, "the Sync of an executed statement must still be held"
        tg.start_soon(insert, "waiter", waiter)
        await _wait_blocked(direct, f"waiter-{table}")  # the key is taken, but not yet committed
        if winner_ends == "commits":
            gate.release_sync(1)
        else:
            gate.cut()
    await winner.close()
    await waiter.close()
    rows = direct.execute(f"SELECT who FROM {table}").fetchall()
    if winner_ends == "commits":
        assert outcomes == {"winner": "inserted", "waiter": "UniqueViolation"}
        assert rows == [("winner",)]
    else:
        assert outcomes == {"winner": "OperationalError", "waiter": "inserted"}
        assert rows == [("waiter",)]


# Real clients' shapes: describe-first, operations, pools, unknown shapes ----------------


@contextlib.asynccontextmanager
async def released_on_failure(gate: StatementGate) -> AsyncIterator[None]:
    """A failed assertion must not leave a client waiting on a hold (its task would hang
    the task group's exit)."""
    try:
        yield
    except BaseException:
        gate.open()
        raise


async def executed(gate: StatementGate, seq: int) -> StatementEvent:
    """Once the server reported statement `seq` executed: woken by the gate, no polling."""
    version = gate.version
    while not (event := gate.events[seq - 1]).executed:
        version = await gate.wait_changed(version)
    return event


async def asyncpg_connect(proxy, dsn_through, **params) -> asyncpg.Connection:
    return await asyncpg.connect(**connect_kwargs(dsn_through(proxy.port, **params)))


async def test_describe_first_is_one_statement_with_both_hold_points(
    pg_proxy, dsn_through, table, direct
):
    """asyncpg: Parse/Describe/Flush, the server answers, then Bind/Execute/Sync."""
    gate = pg_proxy.gate()
    conn = await asyncpg_connect(pg_proxy, dsn_through, application_name="describer")
    try:
        seq = len(gate.events) + 1
        gate.hold_before(seq)
        gate.hold_sync(seq)
        async with anyio.create_task_group() as tg, released_on_failure(gate):
            tg.start_soon(conn.execute, f"INSERT INTO {table} VALUES ($1, $2)", 1, "describer")
            held = await gate.wait_held(seq)
            assert (held.text, held.flights, held.awaiting_server, held.forwarded_at) == (
                f"INSERT INTO {table} VALUES ($1, $2)",
                1,
                True,
                None,
            )
            gate.release(seq)
            await gate.wait_sync_held(seq)
            at_commit = await executed(gate, seq)
            assert at_commit.sync_held
            assert at_commit.flights == 2
            assert at_commit.sent_at is not None
            assert at_commit.synced_at is None
            assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            gate.release_sync(seq)
            done = await gate.wait_completed(seq)
        assert done.command_tags == ("INSERT 0 1",)
        assert done.sent_at < done.synced_at <= done.completed_at
        assert direct.execute(f"SELECT who FROM {table}").fetchall() == [("describer",)]
    finally:
        await conn.close()


async def test_step_mode_holds_only_the_steps_of_an_operation(pg_proxy, dsn_through, table, direct):
    """A connect-time ping, the pool's ping and SET inside the operation, and a statement
    after it pass unheld and are no steps; the one write is held at both hold points."""
    gate = pg_proxy.gate()
    insert = f"INSERT INTO {table} VALUES ($1, $2)"
    async with await connect(pg_proxy, dsn_through, autocommit=True) as conn:
        await conn.execute("SELECT 1=1")  # at connect, no operation in flight
        gate.hold_steps()

        async def operation() -> None:
            assert gate.begin_operation() == 1
            try:
                await conn.execute("SELECT 1")  # the pool's checkout ping
                await conn.execute("SET lock_timeout = '5s'")
                await conn.execute(insert.replace("$1", "%s").replace("$2", "%s"), [1, "step"])
            finally:
                gate.end_operation()

        async with anyio.create_task_group() as tg, released_on_failure(gate):
            tg.start_soon(operation)
            held = await gate.wait_held()
            assert (held.text, held.scheduled, held.operation) == (insert, True, 1)
            gate.release(held.seq)
            await gate.wait_sync_held(held.seq)
            assert (await executed(gate, held.seq)).sync_held
            gate.release_sync(held.seq)
        await conn.execute("SELECT now()")
    events = gate.events
    assert [(e.text, e.scheduled, e.housekeeping, e.operation) for e in events] == [
        ("SELECT 1=1", False, True, None),
        ("SELECT 1", False, True, 1),
        ("SET lock_timeout = '5s'", False, True, 1),
        (insert, True, False, 1),
        ("SELECT now()", False, False, None),
    ]
    assert [e.seq for e in gate.steps] == [held.seq]
    assert not any(e.held or e.sync_held for e in events)
    assert direct.execute(f"SELECT who FROM {table}").fetchall() == [("step",)]


async def test_a_pool_is_followed_on_every_connection(pg_proxy, dsn_through, table, direct):
    """asyncpg's pool: connect-time codec set-up, describe-first on each connection, the
    reset query on release; every step of the operation is held, on whichever connection."""
    gate = pg_proxy.gate()
    pool = await asyncpg.create_pool(
        min_size=3, max_size=3, **connect_kwargs(dsn_through(pg_proxy.port))
    )
    try:
        gate.hold_steps()
        insert = f"INSERT INTO {table} VALUES ($1, $2)"

        async def operation() -> None:
            gate.begin_operation()
            try:
                async with anyio.create_task_group() as writers:
                    for key in (1, 2, 3):
                        writers.start_soon(pool.execute, insert, key, "pooled")
            finally:
                gate.end_operation()

        async with anyio.create_task_group() as tg, released_on_failure(gate):
            tg.start_soon(operation)
            version = gate.version
            while len(held := gate.held) < 3:
                version = await gate.wait_changed(version)
            assert {e.text for e in held} == {insert}
            assert len({e.conn_id for e in held}) == 3, "three connections, all gated"
            assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            for event in held:
                gate.release(event.seq)
                await gate.wait_sync_held(event.seq)
                gate.release_sync(event.seq)
                await gate.wait_completed(event.seq)
    finally:
        await pool.close()
    assert [e.text for e in gate.steps] == [insert] * 3
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)


async def test_an_unknown_shape_fails_waits_at_once(pg_proxy, pg_dsn):
    """A message type the tracker does not know: waits raise it, naming it, at once."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    gate = pg_proxy.gate()
    startup = b"user\0" + params.get("user", "postgres").encode() + b"\0\0"
    startup = struct.pack("!ii", len(startup) + 8, 196608) + startup
    with socket.create_connection(("127.0.0.1", pg_proxy.port), timeout=5) as sock:
        sock.sendall(startup)
        while b"Z\x00\x00\x00\x05I" not in sock.recv(65536):
            pass
        sock.sendall(b"z\x00\x00\x00\x04")
        with anyio.fail_after(5), pytest.raises(UnknownWireShape, match=r"'z' \(0x7a\)"):
            await gate.wait_completed(1)
    assert gate.failure is not None


async def test_cut_after_send_of_a_describe_first_statement_cuts_at_its_commit(
    pg_proxy, dsn_through, table, direct
):
    """Not received whole while held before its first flight; once its Sync is held, a cut
    after send commits it and loses the answer (kill-after-send's order for such clients)."""
    gate = pg_proxy.gate()
    conn = await asyncpg_connect(pg_proxy, dsn_through)
    seq = len(gate.events) + 1
    gate.hold_before(seq)
    gate.hold_sync(seq)
    async with anyio.create_task_group() as tg, released_on_failure(gate):

        async def inserting() -> None:
            with pytest.raises(asyncpg.ConnectionDoesNotExistError):
                await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, "cut")

        tg.start_soon(inserting)
        assert not (await gate.wait_held(seq)).received_whole
        gate.release(seq)
        assert (await gate.wait_sync_held(seq)).received_whole
        await executed(gate, seq)  # its answers so far are in: the next one is the commit's
        gate.cut_after_send(seq)
        event = await gate.wait_completed(seq)
    conn.terminate()
    assert (event.cut, event.completed_at) == (True, None)
    assert direct.execute(f"SELECT who FROM {table}").fetchall() == [("cut",)]
