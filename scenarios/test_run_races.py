"""Run races, forced: concurrent begins on one chat, and a winner that dies before its
commit while another begin waits on it (its connection cut, its backend terminated, or its
process killed)."""

from __future__ import annotations

import pytest

from harness import Run, RunAlreadyActive
from harness.race import Op, Produced, Race, RaceOutcome, given, round_robin
from scenarios.support import ACTIVE_RUN_STATUSES, RACE_WS

pytestmark = pytest.mark.anyio

BEGIN = Op("begin_run", chat_id=given("chat_id"), workspace_id=RACE_WS)


async def a_chat(store, db_clock) -> dict[str, str]:
    return {"chat_id": await store.create_chat(workspace_id=RACE_WS)}


def begins(outcome: RaceOutcome) -> tuple[list[Run], list[BaseException]]:
    """The runs the begins returned, and every error they raised."""
    records = [op for op in outcome.history.operations if op.operation == "begin_run"]
    won = [op.result for op in records if op.outcome == "ok"]
    errors = [op.error for op in records if op.error is not None]
    return won, errors


async def active_run_is(outcome: RaceOutcome, run: Run) -> None:
    latest = await outcome.reader_store.latest_run(
        chat_id=outcome.context["chat_id"], workspace_id=RACE_WS
    )
    assert latest is not None, "the chat has no run at all"
    assert latest.id == run.id, (
        f"the begin that returned run {run.id!r} is not the chat's latest run ({latest!r})"
    )
    assert latest.status in ACTIVE_RUN_STATUSES, f"the winning run is {latest.status!r}"


# RUN-1: N concurrent begins on one chat ----------------------------------------------


async def exactly_one_winner(outcome: RaceOutcome) -> None:
    won, errors = begins(outcome)
    described = "; ".join(op.describe() for op in outcome.history.operations)
    assert len(won) == 1, f"{len(won)} begins returned a run, exactly one may: {described}"
    others = [e for e in errors if not isinstance(e, RunAlreadyActive)]
    assert not others, f"a losing begin raised something else than RunAlreadyActive: {described}"
    assert len(errors) == len(outcome.history.operations) - 1
    assert all(e.chat_id == outcome.context["chat_id"] for e in errors), (  # type: ignore[attr-defined]
        "RunAlreadyActive does not carry the chat id"
    )
    await active_run_is(outcome, won[0])


def concurrent_begins(count: int) -> Race:
    names = [f"replica{n}" for n in range(1, count + 1)]
    return Race(
        name=f"{count} concurrent begins",
        setup=a_chat,
        actors={name: [BEGIN] for name in names},
        produced=(
            Produced(
                "a begin reached the database after another had committed its run",
                lambda o: any(o.reached_after(a, b) for a in names for b in names if a != b),
            )
            if count == 2
            else Produced(
                "every begin reached the database before any had committed",
                lambda o: all(o.overlapped(a, names[0]) for a in names[1:]),
            ),
            Produced(
                "a begin waited on another's uncommitted run",
                lambda o: any(o.waited_on_another(n) for n in names),
                statement_level_only=True,
            ),
        ),
        check=exactly_one_winner,
    )


@pytest.mark.requirement("RUN-1")
@pytest.mark.parametrize("count", range(2, 9), ids=lambda n: f"{n}-begins")
async def test_concurrent_begins_have_one_winner(race_engine, count):
    """N begins on one chat: one run, N-1 RunAlreadyActive, never two active runs."""
    await race_engine.explore(
        concurrent_begins(count), schedules=None if count == 2 else round_robin
    )


# RUN-3 (and RUN-2): the winner dies before its commit --------------------------------


async def waiter_wins_over_a_dead_winner(outcome: RaceOutcome) -> None:
    if not outcome.died_uncommitted("winner"):
        return  # the winner committed first: the waiter's conflict is RUN-1's scenario
    waiter = outcome.operations("waiter")[0]
    assert waiter.outcome == "ok", (
        "the winner died before committing, so its run does not exist and the waiting "
        f"begin had to succeed: {waiter.describe()}"
    )
    await active_run_is(outcome, waiter.result)


async def dead_winner_does_not_blame_a_conflict(outcome: RaceOutcome) -> None:
    winner = outcome.operations("winner")[0]
    assert not isinstance(winner.error, RunAlreadyActive), (
        f"the winner's connection died, yet it reported RunAlreadyActive: {winner.describe()}"
    )


def winner_dies(fault: str, check) -> Race:
    return Race(
        name=f"the winning begin dies before commit ({fault})",
        setup=a_chat,
        actors={"winner": [BEGIN], "waiter": [BEGIN]},
        produced=(
            Produced(
                "the waiter's begin reached the database while the winner's was uncommitted, "
                "and the winner died",
                lambda o: o.overlapped("waiter", "winner") and o.died_uncommitted("winner"),
            ),
        ),
        check=check,
        processes=fault == "kill",
    )


def fault_after_each_winner_step(fault: str):
    """The winner takes k steps, the waiter m (up to its wait, if it has to wait), then the
    fault hits the winner: every k and m."""

    def schedules(steps: dict[str, int]) -> list[tuple[str, ...]]:
        return [
            ("winner",) * k + ("waiter",) * m + (f"{fault}:winner",)
            for k in range(1, steps["winner"] + 1)
            for m in range(1, steps["waiter"] + 1)
        ]

    return schedules


FAULTS = pytest.mark.parametrize(
    "fault", ["cut", "terminate"], ids=["connection-cut", "backend-terminated"]
)


@pytest.mark.requirement("RUN-3")
@pytest.mark.capability("network")
@pytest.mark.parametrize(
    "fault",
    [
        "cut",
        "terminate",
        pytest.param("kill", marks=pytest.mark.capability("process")),
    ],
    ids=["connection-cut", "backend-terminated", "process-killed"],
)
async def test_waiting_begin_wins_when_the_winner_dies(race_engine, fault):
    """A begin waiting on a winner that dies before commit succeeds instead of failing."""
    race = winner_dies(fault, waiter_wins_over_a_dead_winner)
    await race_engine.explore(race, schedules=fault_after_each_winner_step(fault))


@pytest.mark.requirement("RUN-2")
@pytest.mark.capability("network")
@FAULTS
async def test_a_dead_winner_is_not_reported_as_a_conflict(race_engine, fault):
    """A begin whose connection dies raises its own error, never RunAlreadyActive."""
    race = winner_dies(fault, dead_winner_does_not_blame_a_conflict)
    await race_engine.explore(race, schedules=fault_after_each_winner_step(fault))
