"""The race engine's own guarantees: interleavings, vacuity, no hangs, transcripts, reruns,
and operation-level scheduling for adapters without the `network` capability."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness.adapter_loading import load_adapter
from harness.errors import HarnessError
from harness.proxy.server import RunningProxyServer
from harness.race import Op, Produced, Race, RaceEngine, given
from harness.race.interleavings import count_interleavings, interleavings

WS = "w"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_interleavings_keep_each_actors_order():
    orders = list(interleavings({"a": 2, "b": 1}))
    assert orders == [("a", "a", "b"), ("a", "b", "a"), ("b", "a", "a")]
    assert count_interleavings({"a": 2, "b": 2, "c": 2}) == 90
    assert len(set(interleavings({"a": 2, "b": 2, "c": 2}))) == 90


@pytest.fixture
def proxies() -> Iterator[RunningProxyServer]:
    with RunningProxyServer.start() as server:
        yield server


async def a_message(store, db_clock) -> dict[str, str]:
    chat_id = await store.create_chat(workspace_id=WS)
    message_id = await store.persist_assistant_shell(chat_id=chat_id, workspace_id=WS, turn_id="t")
    return {"message_id": message_id}


async def nothing_to_check(outcome) -> None:
    """The engine's behaviour is under test here, not the implementation's."""


STEP = Op("append_step", message_id=given("message_id"), workspace_id=WS, content="x", parts=[])


@pytest.mark.anyio
async def test_a_race_that_never_happens_is_a_harness_error(databases, proxies):
    race = Race(
        name="impossible",
        setup=a_message,
        actors={"one": [STEP], "two": [STEP]},
        produced=(Produced("pigs flew", lambda outcome: False),),
        check=nothing_to_check,
    )
    with pytest.raises(HarnessError, match=r"this never happened: pigs flew\. A race that"):
        await RaceEngine(load_adapter("reference"), databases, proxies).explore(race)


@pytest.mark.anyio
async def test_a_step_that_never_completes_is_reported_not_hung(databases, proxies):
    class SlowStep:
        """An implementation whose step hangs in the database (not on a lock)."""

        def __init__(self, store) -> None:
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        async def append_step(self, **_arguments) -> bool:
            await self._store._conn.execute("SELECT pg_sleep(30)")
            return True

    reference = load_adapter("reference")

    class SlowAdapter:
        name = "slow-step"
        capabilities = reference.capabilities

        async def install(self, dsn: str) -> None:
            await reference.install(dsn)

        async def connect(self, dsn: str, *, clock=None):
            return SlowStep(await reference.connect(dsn, clock=clock))

    race = Race(
        name="slow",
        setup=a_message,
        actors={"slow": [STEP]},
        produced=(Produced("it ran", lambda outcome: True),),
        check=nothing_to_check,
    )
    engine = RaceEngine(SlowAdapter(), databases, proxies, step_timeout=1.0)
    with pytest.raises(HarnessError, match=r"under schedule \['slow'\]: a step never completed"):
        await engine.run_schedules(race, [("slow",)])


@pytest.mark.anyio
async def test_blocked_actor_scheduled_to_move_is_an_impossible_interleaving(databases, proxies):
    race = Race(
        name="two steps on one row",
        setup=a_message,
        actors={"a": [STEP], "b": [STEP]},
        produced=(Produced("b waited on a", lambda o: o.waited_on_another("b")),),
        check=nothing_to_check,
    )
    engine = RaceEngine(load_adapter("reference"), databases, proxies)
    # a executes (uncommitted), b executes and waits on a's row, then b is asked to commit.
    exploration = await engine.run_schedules(race, [("a", "b", "b", "a"), ("a", "b", "a", "b")])
    assert (exploration.run, exploration.invalid) == (1, 1)


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


def test_failure_shows_transcript_and_a_rerun_line_that_reproduces_it(
    run_scenarios, postgres_server, tmp_path
):
    failing = run_scenarios(
        "reference_impl.broken:read_then_write_step",
        "-k",
        "late_step",
        target="scenarios.test_message_races",
    )
    output = failing.result.stdout.str()
    assert failing.status("MSG-4") == "fail", output
    assert "transcript:" in output
    assert "step step: SELECT status FROM messages" in output
    assert "step finalize: commit (" in output
    rerun = re.search(r"rerun: pytest (.*--race-schedule '[a-z,]+')", output)
    assert rerun, output
    replay = subprocess.run(
        [sys.executable, "-m", "pytest", *shlex.split(rerun[1])],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "TURNPROOF_PG_DSN": postgres_server.admin_dsn},
    )
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "the finalized row was clobbered" in replay.stdout
    assert "1 failed" in replay.stdout
