"""The race engine's own guarantees on a real server: vacuity, no hangs, forced schedules,
verdicts for multi-statement (ORM-shaped) and pooled implementations, shrinking and
replay, transcripts and rerun lines, operation-level scheduling."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.database import InMemoryExampleDatabase

from harness.adapter_loading import load_adapter
from harness.errors import HarnessError
from harness.proxy.server import RunningProxyServer
from harness.race import InvalidInterleaving, Op, Produced, Race, RaceEngine, RaceFailure, Step
from harness.race import given as given_value
from reference_impl import ReferenceAdapter
from reference_impl.store import INSERT_TURN_SQL, PgTurnStore, turn_params
from scenarios.races import LATE_STEP, duplicate_turn_race

WS = "w"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def proxies() -> Iterator[RunningProxyServer]:
    with RunningProxyServer.start() as server:
        yield server


@pytest.fixture
def hypothesis_in_memory() -> Iterator[None]:
    """A Hypothesis profile of this test's own: an example database nobody else sees."""
    settings.register_profile("race-engine-test", database=InMemoryExampleDatabase())
    settings.load_profile("race-engine-test")
    yield
    settings.load_profile("default")


async def a_message(store, db_clock) -> dict[str, str]:
    chat_id = await store.create_chat(workspace_id=WS)
    message_id = await store.persist_assistant_shell(chat_id=chat_id, workspace_id=WS, turn_id="t")
    return {"message_id": message_id}


async def nothing_to_check(outcome) -> None:
    """The engine's behaviour is under test here, not the implementation's."""


STEP = Op(
    "append_step", message_id=given_value("message_id"), workspace_id=WS, content="x", parts=[]
)
TWO_STEPS = Race(
    name="two steps on one row",
    setup=a_message,
    actors={"a": [STEP], "b": [STEP]},
    produced=(Produced("b waited on a", lambda o: o.waited_on_another("b")),),
    check=nothing_to_check,
)


# -- implementations shaped like ORM sessions and pools -----------------------------------


class OrmShapedStore(PgTurnStore):
    """Correct, and shaped like an ORM session: every write is one explicit transaction of
    several statements (BEGIN, a SELECT, a write, COMMIT), whose count depends on what the
    SELECT found."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        params = turn_params(**turn)
        lookup = (
            "SELECT id FROM messages WHERE chat_id = %(chat_id)s AND workspace_id ="
            " %(workspace_id)s AND turn_id = %(turn_id)s AND role = %(role)s"
        )
        async with self._conn.transaction():
            row = await self._one(lookup, params)
            if row is None:
                row = await self._one(
                    INSERT_TURN_SQL + " ON CONFLICT (chat_id, turn_id, role)"
                    " WHERE turn_id IS NOT NULL DO NOTHING RETURNING id",
                    params,
                )
            if row is None:  # a concurrent writer won: READ COMMITTED sees its row now
                row = await self._one(lookup, params)
        return row["id"] if row else None

    async def append_step(self, *, message_id, workspace_id, content, parts) -> bool:
        async with self._conn.transaction():
            row = await self._one(
                "SELECT status FROM messages WHERE id = %(id)s AND workspace_id = %(ws)s"
                " FOR UPDATE",
                {"id": message_id, "ws": workspace_id},
            )
            if row is None or row["status"] != "streaming":
                return False
            return await super().append_step(
                message_id=message_id, workspace_id=workspace_id, content=content, parts=parts
            )


class PooledStore:
    """Correct, with a pool of two connections taken in turn, starting with the second:
    each operation runs on another backend than the one opened first."""

    def __init__(self, stores: list[PgTurnStore]) -> None:
        self._stores = stores
        self._turn = 0

    def __getattr__(self, name: str) -> Any:
        self._turn += 1
        return getattr(self._stores[self._turn % len(self._stores)], name)

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()


class PooledAdapter(ReferenceAdapter):
    async def connect(self, dsn: str, *, clock=None) -> PooledStore:  # type: ignore[override]
        return PooledStore([await PgTurnStore.open(dsn, clock=clock) for _ in range(2)])


# -- vacuity, hangs, forced schedules -----------------------------------------------------


@pytest.mark.anyio
async def test_a_race_that_never_happens_is_a_harness_error(databases, proxies):
    race = Race(
        name="impossible",
        setup=a_message,
        actors={"one": [STEP], "two": [STEP]},
        produced=(Produced("pigs flew", lambda outcome: False),),
        check=nothing_to_check,
    )
    async with RaceEngine(load_adapter("reference"), databases, proxies) as engine:
        with pytest.raises(HarnessError, match=r"this never happened: pigs flew\. A race that"):
            await engine.explore(race)


@pytest.mark.anyio
async def test_a_step_that_never_completes_is_reported_not_hung(databases, proxies):
    class SlowStep(PgTurnStore):
        """An implementation whose step hangs in the database (not on a lock)."""

        async def append_step(self, **_arguments) -> bool:
            await self._conn.execute("SELECT pg_sleep(30)")
            return True

    race = Race(
        name="slow",
        setup=a_message,
        actors={"slow": [STEP]},
        produced=(Produced("it ran", lambda outcome: True),),
        check=nothing_to_check,
    )
    adapter = ReferenceAdapter(name="slow-step", store_class=SlowStep)
    async with RaceEngine(adapter, databases, proxies, step_timeout=1.0) as engine:
        with pytest.raises(HarnessError, match=r"under schedule \[slow\]: a step never completed"):
            await engine.run_schedules(race, [(Step("slow"),)])


@pytest.mark.anyio
async def test_a_forced_schedule_that_moves_a_blocked_actor_names_the_step(databases, proxies):
    # a executes (uncommitted), b executes and waits on a's row, then b is asked to move.
    forced = (Step("a"), Step("b"), Step("b"))
    async with RaceEngine(
        load_adapter("reference"), databases, proxies, forced_schedule=forced
    ) as engine:
        with pytest.raises(
            InvalidInterleaving,
            match=r"step 3 \(b, entry 3 of the schedule\): b is blocked on another's lock; "
            r"the actors that could move were a",
        ):
            await engine.explore(TWO_STEPS)


@pytest.mark.anyio
async def test_schedules_are_chosen_among_the_actors_that_can_move(databases, proxies):
    """Every schedule of two steps on one row, none impossible: b never moves while a's
    uncommitted row blocks it, and the search says the tree was exhausted."""
    async with RaceEngine(load_adapter("reference"), databases, proxies) as engine:
        exploration = await engine.explore(TWO_STEPS)
    assert exploration.exhausted
    assert exploration.invalid == 0
    assert len(set(exploration.schedules)) == exploration.run == 4


# -- verdicts for ORM-shaped and pooled implementations ------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("writers", [2, 4, 8], ids=lambda n: f"{n}-writers")
@pytest.mark.parametrize("operation", ["persist_user_turn", "persist_assistant_shell"])
async def test_an_orm_shaped_store_gets_a_verdict(databases, proxies, writers, operation):
    adapter = ReferenceAdapter(name="orm-shaped", store_class=OrmShapedStore)
    role = "user" if operation == "persist_user_turn" else "assistant"
    async with RaceEngine(adapter, databases, proxies, sample=20, walks=5) as engine:
        exploration = await engine.explore(duplicate_turn_race(operation, role, writers))
    assert exploration.produced > 0


@pytest.mark.anyio
async def test_an_orm_shaped_late_step_gets_a_verdict(databases, proxies):
    adapter = ReferenceAdapter(name="orm-shaped", store_class=OrmShapedStore)
    async with RaceEngine(adapter, databases, proxies) as engine:
        exploration = await engine.explore(LATE_STEP)
    assert exploration.exhausted, exploration.summary()


@pytest.mark.anyio
async def test_every_connection_of_a_pooled_actor_is_watched_for_lock_waits(databases, proxies):
    """The step runs on the pool's second connection: its lock wait is still seen."""
    async with RaceEngine(PooledAdapter(name="pooled"), databases, proxies) as engine:
        exploration = await engine.explore(LATE_STEP)
    assert "the step's write waited on the finalize's uncommitted row" in exploration.seen


# -- shrinking, the example database, Hypothesis as the search -----------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("hypothesis_in_memory")
async def test_a_failure_of_the_choice_tree_is_stored_as_found_and_replayed_first(
    databases, proxies
):
    """The tree runs every schedule with fewer deviations first, so its failure needs no
    shrinking: it is stored as it is and replayed first by the next exploration."""
    broken = load_adapter("reference_impl.broken:read_then_write_in_transaction")
    async with RaceEngine(broken, databases, proxies, rerun=lambda s: f"rerun {s}") as engine:
        with pytest.raises(RaceFailure) as first:
            await engine.explore(LATE_STEP)
        with pytest.raises(RaceFailure) as again:
            await engine.explore(LATE_STEP)
    found = first.value.outcome
    assert "found by exhaustive search" in str(first.value)
    assert "shrunk" not in str(first.value)
    assert found.shortest == (Step("finalize"), Step("step"))
    assert "replayed from Hypothesis's example database" in str(again.value)
    assert again.value.outcome.shortest == found.shortest


@pytest.mark.anyio
@pytest.mark.usefixtures("hypothesis_in_memory")
async def test_a_failure_of_a_walk_is_shrunk_by_hypothesis(databases, proxies):
    broken = load_adapter("reference_impl.broken:read_then_write_in_transaction")
    async with RaceEngine(broken, databases, proxies, mode="pct") as engine:
        with pytest.raises(RaceFailure) as failure:
            await engine.explore(LATE_STEP)
    found = failure.value.outcome
    assert "found by pct search" in str(failure.value)
    assert "shrunk by Hypothesis" in str(failure.value)
    assert found.shortest == (Step("finalize"), Step("step"))


@pytest.mark.anyio
@pytest.mark.usefixtures("hypothesis_in_memory")
async def test_hypothesis_can_be_the_search(databases, proxies):
    broken = load_adapter("reference_impl.broken:read_then_write_step")
    async with RaceEngine(broken, databases, proxies, mode="hypothesis") as engine:
        with pytest.raises(RaceFailure, match="found and shrunk by Hypothesis"):
            await engine.explore(LATE_STEP)


# -- the plugin: operation level, transcripts, rerun lines --------------------------------

NO_NETWORK_ADAPTER = """
from reference_impl import ReferenceAdapter
from reference_impl.broken import UnguardedStep

class WithoutNetwork(ReferenceAdapter):
    capabilities = ReferenceAdapter.capabilities - {"network"}

reference = WithoutNetwork(name="reference-without-network")
unguarded = WithoutNetwork(name="unguarded-without-network", store_class=UnguardedStep)
"""


def test_without_network_races_run_at_operation_level(pytester, run_scenarios):
    pytester.makepyfile(no_network=NO_NETWORK_ADAPTER)
    pytester.syspathinsert()
    passing = run_scenarios("no_network:reference", target="scenarios.test_message_races")
    assert passing.status("MSG-4") == "pass", passing.result.stdout.str()
    assert passing.status("USG-1") == "pass"
    failing = run_scenarios(
        "no_network:unguarded", "-k", "late_step", target="scenarios.test_message_races"
    )
    assert failing.status("MSG-4") == "fail", failing.result.stdout.str()


def rerun_elsewhere(command: str, postgres_server, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *shlex.split(command)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, "TURNPROOF_PG_DSN": postgres_server.admin_dsn},
    )


def test_failure_shows_its_timeline_and_a_rerun_line_that_reproduces_it(
    run_scenarios, postgres_server, tmp_path
):
    failing = run_scenarios(
        "reference_impl.broken:read_then_write_in_transaction",
        "-k",
        "late_step",
        target="scenarios.test_message_races",
    )
    output = failing.result.stdout.str()
    assert failing.status("MSG-4") == "fail", output
    assert "timeline (schedule: " in output, output
    assert re.search(r"FINALIZE +STEP", output), "one column per actor"
    assert re.search(r"runs(, its commit held)?: SELECT status FROM", output), output
    assert "transcript:" not in output, "the transcript is for -v"
    rerun = re.search(r"rerun: pytest (.*--race-schedule '[a-z,]+')", output)
    assert rerun, output
    replay = rerun_elsewhere(rerun[1], postgres_server, tmp_path)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "the finalized row was clobbered" in replay.stdout
    assert "1 failed" in replay.stdout
    worker = shlex.quote(
        f"{sys.executable} -m harness.worker "
        "--adapter reference_impl.broken:read_then_write_in_transaction"
    )
    through_driver = rerun[1].replace(
        "--adapter reference_impl.broken:read_then_write_in_transaction",
        f"--adapter-cmd {worker}",
    )
    replay = rerun_elsewhere(through_driver, postgres_server, tmp_path)
    assert "the finalized row was clobbered" in replay.stdout, replay.stdout + replay.stderr


def test_verbose_failure_adds_the_isolation_tester_transcript(run_scenarios):
    failing = run_scenarios(
        "reference_impl.broken:read_then_write_in_transaction",
        "-k",
        "late_step",
        "-v",
        target="scenarios.test_message_races",
    )
    output = failing.result.stdout.str()
    assert failing.status("MSG-4") == "fail", output
    assert "transcript:" in output, output
    assert "step step: SELECT status FROM messages" in output
    assert "step finalize: complete (" in output or "step finalize: commit (" in output
