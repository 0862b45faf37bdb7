"""The statement gate through every real client it claims to handle (issue 9): the gate's
hardest scenario, a late step held in transit while another replica finalizes (MSG-4),
reaches a verdict through psycopg, psycopg's pipeline mode, asyncpg, node-postgres and
postgres.js; the read-then-write variants fail MSG-4 through asyncpg and postgres.js."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Self

import pytest
from psycopg.rows import DictRow

# Loaded here, in the outer process, on purpose: pytester's in-process runs drop the modules
# an inner run imported, and asyncpg's compiled modules crash when imported a second time.
import examples.asyncpg_store  # noqa: F401
from harness.contract import Clock
from reference_impl.adapter import ReferenceAdapter
from reference_impl.store import PgTurnStore
from tests.driver_helpers import installed_node_driver, node_driver_command

POSTGRES_JS_DRIVER = Path(__file__).resolve().parents[1] / "examples" / "postgres-js-driver"
LATE_STEP = "test_late_step_held_in_transit_is_a_no_op"
LATE_STEP_RACE = "test_late_step_never_clobbers_a_finalized_row"


class PipelinedStore(PgTurnStore):
    """The reference, every statement sent in psycopg's pipeline mode: Parse/Bind/Describe/
    Execute, then Sync and a Flush, the way pipelined batches reach the server."""

    async def _one(self, sql: str, params: dict[str, Any]) -> DictRow | None:
        async with self._conn.pipeline():
            cur = await self._conn.execute(sql, params)
        return await cur.fetchone()

    async def _all(self, sql: str, params: dict[str, Any]) -> list[DictRow]:
        async with self._conn.pipeline():
            cur = await self._conn.execute(sql, params)
        return await cur.fetchall()

    async def _changed(self, sql: str, params: dict[str, Any]) -> int:
        async with self._conn.pipeline():
            cur = await self._conn.execute(sql, params)
        return cur.rowcount


pipeline_adapter = ReferenceAdapter(name="psycopg-pipeline", store_class=PipelinedStore)


class PingingStore(PgTurnStore):
    """The reference with a pool's habits: a ping at connect, and a ping and a session SET
    before every statement, as pools do on checkout."""

    @classmethod
    async def open(cls, dsn: str, *, clock: Clock | None = None) -> Self:
        store = await super().open(dsn, clock=clock)
        await store._conn.execute("SELECT 1=1")
        return store

    async def _checkout(self) -> None:
        await self._conn.execute("SELECT 1")
        await self._conn.execute("SET statement_timeout = '30s'")

    async def _one(self, sql: str, params: dict[str, Any]) -> DictRow | None:
        await self._checkout()
        return await super()._one(sql, params)

    async def _all(self, sql: str, params: dict[str, Any]) -> list[DictRow]:
        await self._checkout()
        return await super()._all(sql, params)

    async def _changed(self, sql: str, params: dict[str, Any]) -> int:
        await self._checkout()
        return await super()._changed(sql, params)


pinging_adapter = ReferenceAdapter(name="pinging", store_class=PingingStore)


def postgres_js_command(*extra: str) -> str:
    """The postgres.js example driver's command, installed from its lockfile; skips the test
    where node or npm is missing."""
    return shlex.join([*installed_node_driver(POSTGRES_JS_DRIVER), *extra])


def adapter_args(client: str) -> list[str]:
    """The run's --adapter / --adapter-cmd options for one client."""
    if client == "psycopg":
        return ["--adapter", "reference"]
    if client == "psycopg-pipeline":
        return ["--adapter", "tests.test_wire_clients:pipeline_adapter"]
    if client == "asyncpg":
        return ["--adapter", "examples.asyncpg_store:adapter"]
    if client == "node-postgres":
        return ["--adapter-cmd", shlex.join(node_driver_command())]
    if client == "postgres.js":
        return ["--adapter-cmd", postgres_js_command()]
    raise AssertionError(client)


def broken_args(client: str) -> list[str]:
    if client == "asyncpg":
        return ["--adapter", "examples.asyncpg_store:read_then_write_step"]
    return ["--adapter-cmd", postgres_js_command("--broken", "read-then-write")]


@pytest.fixture
def run_selection(run_scenarios):
    """run_scenarios with the adapter given as options (the fixture's own --adapter is the
    reference; a later --adapter or --adapter-cmd replaces it)."""

    def run(args: list[str], *selection: str, target: str):
        return run_scenarios("reference", *args, *selection, target=target)

    return run


CLIENTS = ["psycopg", "psycopg-pipeline", "asyncpg", "node-postgres", "postgres.js"]


@pytest.mark.parametrize("client", CLIENTS)
def test_late_step_held_in_transit_reaches_a_verdict(run_selection, client):
    run = run_selection(
        adapter_args(client), "-k", LATE_STEP, target="scenarios.test_network_faults"
    )
    output = run.result.stdout.str()
    assert run.result.parseoutcomes() == {"passed": 1, **deselected(run)}, output
    assert run.errors() == 0, output


@pytest.mark.parametrize("client", ["asyncpg", "postgres.js"])
def test_read_then_write_variant_fails_msg_4(run_selection, client):
    run = run_selection(broken_args(client), "-k", LATE_STEP_RACE, target="scenarios")
    output = run.result.stdout.str()
    assert run.status("MSG-4") == "fail", output
    assert LATE_STEP_RACE in " ".join(run.failing()), output
    assert run.errors() == 0, output


def schedules_explored(output: str, race: str) -> str:
    """The race's exploration figure from the run's summary, e.g. 'all 4 statement-level
    schedules'."""
    found = re.search(rf"{race}: (.*? schedules)", output)
    assert found, output
    return found.group(1)


def test_pings_and_connect_time_statements_never_change_the_schedule(run_scenarios):
    """The same race, by the reference and by a store that pings at connect and before every
    statement: the same schedules, the same verdict."""
    plain = run_scenarios("reference", "-k", LATE_STEP_RACE, target="scenarios")
    pinging = run_scenarios(
        "tests.test_wire_clients:pinging_adapter", "-k", LATE_STEP_RACE, target="scenarios"
    )
    for run in (plain, pinging):
        assert run.result.ret == 0, run.result.stdout.str()
    assert schedules_explored(pinging.result.stdout.str(), LATE_STEP_RACE) == (
        schedules_explored(plain.result.stdout.str(), LATE_STEP_RACE)
    )


def deselected(run) -> dict[str, int]:
    outcomes = run.result.parseoutcomes()
    return {"deselected": outcomes["deselected"]} if "deselected" in outcomes else {}
