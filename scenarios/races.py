"""The suite's races, defined once: the scenarios (scenarios/test_*_races.py) explore them,
the race benchmark (turnproof bench race) measures them.

Each race states what it must produce, so an exploration in which the race never
happened is no pass, and checks the final state through the reader store with
messages that say what was expected and what was found. Each uses only the
operations of the capabilities its scenarios declare (the store is guarded).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from harness import Message, Run, RunAlreadyActive, TurnStore
from harness.db_clock import DatabaseClock
from harness.race import (
    Cut,
    Kill,
    Op,
    Proceed,
    Produced,
    Race,
    RaceOutcome,
    Schedule,
    Step,
    Terminate,
    given,
)
from harness.race.scenario import Setup
from scenarios.support import (
    ACTIVE_RUN_STATUSES,
    RACE_WS,
    STALE_ONLY,
    USAGE_A,
    USAGE_B,
    a_chat,
    finalize_op,
    race_gap,
    race_premise,
    step_op,
    streaming_message,
    text_parts,
    usage_values,
)


def any_reached_after(names: Sequence[str]) -> Produced:
    return Produced(
        "an actor's write reached the database after another's had committed",
        lambda o: any(o.reached_after(a, b) for a in names for b in names if a != b),
    )


def any_waited(names: Sequence[str], what: str) -> Produced:
    return Produced(
        f"{what} waited on another's uncommitted row",
        lambda o: any(o.waited_on_another(n) for n in names),
        statement_level_only=True,
    )


async def message_row(outcome: RaceOutcome, key: str = "message_id") -> Message:
    message = await outcome.reader_store.get_message(
        message_id=outcome.context[key], workspace_id=RACE_WS
    )
    assert message is not None, (
        f"expected the {key} row {outcome.context[key]!r} to exist, get_message found nothing"
    )
    return message


# MSG-4: the late step update against the finalize ------------------------------------


async def early_step(store: TurnStore, db_clock: object) -> dict[str, Any]:
    """A streaming assistant message with one step written."""
    context = await streaming_message(store, db_clock)
    await store.append_step(
        message_id=context["message_id"],
        workspace_id=RACE_WS,
        content="early",
        parts=text_parts("early"),
    )
    return context


async def finalize_was_not_clobbered(outcome: RaceOutcome) -> None:
    row = await message_row(outcome)
    found = (row.status, row.content, row.parts)
    assert found == ("completed", "final answer", text_parts("final answer")), (
        "expected the finalized row to stay 'completed' with 'final answer', found status "
        f"{row.status!r} with content {row.content!r}: the finalized row was clobbered"
    )
    if outcome.reached_after("step", "finalize"):
        assert outcome.result("step") is False, (
            "append_step reached the database after the finalize committed: expected it to "
            "return False, it returned True"
        )


LATE_STEP = Race(
    name="late step vs finalize",
    setup=early_step,
    actors={
        "finalize": [finalize_op("final answer", None)],
        "step": [step_op("late step")],
    },
    produced=(
        Produced(
            "the step's write reached the database after the finalize committed",
            lambda o: o.reached_after("step", "finalize"),
        ),
        Produced(
            "the step's write waited on the finalize's uncommitted row",
            lambda o: o.waited_on_another("step"),
            statement_level_only=True,
        ),
    ),
    check=finalize_was_not_clobbered,
)


# MSG-1, MSG-3: concurrent duplicates of one turn -------------------------------------


def one_row_per_turn(role: str, operation: str):
    async def check(outcome: RaceOutcome) -> None:
        writes = outcome.history.operations
        failures = [op.describe() for op in writes if op.outcome != "ok"]
        assert not failures, (
            "expected every duplicate turn write to return the turn's id, but: "
            + "; ".join(failures)
        )
        ids = {op.result for op in writes}
        assert len(ids) == 1, (
            f"expected one id for the turn, the writers got {sorted(map(str, ids))}"
        )
        assert None not in ids, f"expected {operation} to return the row's id, it returned None"
        rows = await outcome.reader_store.list_messages(
            chat_id=outcome.context["chat_id"], workspace_id=RACE_WS
        )
        turn_rows = [r for r in rows if r.turn_id == "turn-1" and r.role == role]
        assert [r.id for r in turn_rows] == list(ids), (
            f"expected exactly the one {role} row {sorted(ids)}, found {[r.id for r in turn_rows]}"
        )
        if role == "user":
            texts = {op.arguments["text"] for op in writes}
            assert turn_rows[0].content in texts, (
                f"expected the row's content to be one writer's text, found "
                f"{turn_rows[0].content!r}"
            )
        elif "streaming" in outcome.capabilities:
            found = (turn_rows[0].status, turn_rows[0].content)
            assert found == ("streaming", ""), (
                f"expected the shell 'streaming' and empty, found {found}"
            )

    return check


def duplicate_turn_race(operation: str, role: str, writers: int) -> Race:
    names = [f"replica{n}" for n in range(1, writers + 1)]

    def write(name: str) -> Op:
        text = {"text": f"text of {name}"} if role == "user" else {}
        return Op(
            operation, chat_id=given("chat_id"), workspace_id=RACE_WS, turn_id="turn-1", **text
        )

    return Race(
        name=f"{writers} concurrent {operation}",
        setup=a_chat,
        actors={name: [write(name)] for name in names},
        produced=(any_reached_after(names), any_waited(names, "a writer")),
        check=one_row_per_turn(role, operation),
    )


# USG-1: two finalizes writing usage for one message ----------------------------------


async def first_committed_usage_stays(outcome: RaceOutcome) -> None:
    for actor in ("first", "second"):
        record = outcome.operations(actor)[0]
        assert record.outcome == "ok", f"expected the finalize to return, but {record.describe()}"
    usage = await outcome.reader_store.usage_for(message_id=outcome.context["message_id"])
    winner = outcome.committed_first("first", "second")
    expected = USAGE_A if winner == "first" else USAGE_B
    assert [usage_values(u) for u in usage] == [usage_values(expected)], (
        f"the {winner} finalize committed first, so expected its usage {usage_values(expected)} "
        f"as the only row; found {[usage_values(u) for u in usage]}"
    )


USAGE_RACE = Race(
    name="two finalizes with different usage",
    setup=streaming_message,
    actors={
        "first": [finalize_op("answer a", USAGE_A)],
        "second": [finalize_op("answer b", USAGE_B)],
    },
    produced=(
        any_reached_after(["first", "second"]),
        any_waited(["first", "second"], "a finalize"),
    ),
    check=first_committed_usage_stays,
)


# RUN-1: N concurrent begins on one chat ----------------------------------------------

BEGIN = Op("begin_run", chat_id=given("chat_id"), workspace_id=RACE_WS)


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
    assert latest is not None, "expected the winning begin's run, the chat has no run at all"
    assert latest.id == run.id, (
        f"expected the chat's latest run to be {run.id!r}, the one begin_run returned; "
        f"found {latest!r}"
    )
    assert latest.status in ACTIVE_RUN_STATUSES, (
        f"expected the winning run active, found it {latest.status!r}"
    )


async def exactly_one_winner(outcome: RaceOutcome) -> None:
    won, errors = begins(outcome)
    described = "; ".join(op.describe() for op in outcome.history.operations)
    assert len(won) == 1, f"expected exactly one begin to return a run, {len(won)} did: {described}"
    others = [e for e in errors if not isinstance(e, RunAlreadyActive)]
    assert not others, f"expected the losing begins to raise RunAlreadyActive: {described}"
    assert len(errors) == len(outcome.history.operations) - 1, (
        f"expected every losing begin to raise: {described}"
    )
    wrong = [e for e in errors if e.chat_id != outcome.context["chat_id"]]  # type: ignore[attr-defined]
    assert not wrong, f"expected RunAlreadyActive to carry the chat id, found {wrong}"
    await active_run_is(outcome, won[0])


def concurrent_begins(count: int) -> Race:
    names = [f"replica{n}" for n in range(1, count + 1)]
    return Race(
        name=f"{count} concurrent begins",
        setup=a_chat,
        actors={name: [BEGIN] for name in names},
        produced=(any_reached_after(names), any_waited(names, "a begin")),
        check=exactly_one_winner,
    )


# RUN-2, RUN-3: the winner dies before its commit -------------------------------------


async def waiter_wins_over_a_dead_winner(outcome: RaceOutcome) -> None:
    if not outcome.died_uncommitted("winner"):
        return  # the winner committed first: the waiter's conflict is RUN-1's scenario
    waiter = outcome.operations("waiter")[0]
    assert waiter.outcome == "ok", (
        "the winner died before committing, so its run does not exist: expected the waiting "
        f"begin to succeed, but {waiter.describe()}"
    )
    await active_run_is(outcome, waiter.result)


async def dead_winner_does_not_blame_a_conflict(outcome: RaceOutcome) -> None:
    winner = outcome.operations("winner")[0]
    assert not isinstance(winner.error, RunAlreadyActive), (
        "the winner's connection died: expected its own error, found RunAlreadyActive: "
        f"{winner.describe()}"
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


FAULTS = {"cut": Cut("winner"), "terminate": Terminate("winner"), "kill": Kill("winner")}


def fault_after_each_winner_step(fault: str):
    """The winner takes k steps, the waiter runs until it waits on the winner (or has
    finished), then the fault hits the winner: for every k up to the winner's last step
    in a non-preemptive run."""

    def schedules(steps: dict[str, int]) -> list[Schedule]:
        return [
            (Step("winner"),) * k + (Proceed("waiter"), FAULTS[fault])
            for k in range(1, steps["winner"] + 1)
        ]

    return schedules


# Sweeps: staleness comes from the database clock -------------------------------------


async def streaming_row(store: TurnStore, chat_id: str, turn_id: str) -> str:
    message_id = await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=RACE_WS, turn_id=turn_id
    )
    assert message_id is not None, "set-up: expected persist_assistant_shell's id, got None"
    await store.append_step(
        message_id=message_id, workspace_id=RACE_WS, content="early", parts=text_parts("early")
    )
    return message_id


async def a_row(store: TurnStore) -> dict[str, object]:
    chat_id = await store.create_chat(workspace_id=RACE_WS)
    return {"chat_id": chat_id, "message_id": await streaming_row(store, chat_id, "turn-1")}


def a_stale_row(gap: timedelta) -> Setup:
    """A streaming row, then `gap` on the database clock: stale at the race's threshold."""

    async def setup(store: TurnStore, db_clock: DatabaseClock) -> dict[str, object]:
        return await a_row(store) | await race_gap(db_clock, gap)

    return setup


def a_stale_and_a_fresh_row(gap: timedelta) -> Setup:
    """A stale row as `a_stale_row`, then another replica's live row, fresh at it."""

    async def setup(store: TurnStore, db_clock: DatabaseClock) -> dict[str, object]:
        context = await a_stale_row(gap)(store, db_clock)
        context["fresh_id"] = await streaming_row(store, context["chat_id"], "turn-2")  # type: ignore[arg-type]
        return context

    return setup


async def a_row_stale_at_any_threshold(
    store: TurnStore, db_clock: DatabaseClock
) -> dict[str, object]:
    """A streaming row older than STALE_ONLY, for races that need no fresh row."""
    context = await a_row(store)
    await db_clock.let_pass(STALE_ONLY)
    return context


SWEEP = Op("sweep_streaming", older_than=given("older_than"))


def either_overlapped(a: str, b: str) -> Produced:
    return Produced(
        f"{a} and {b} each reached the database while the other's write was uncommitted",
        lambda o: o.waited_on_another(a) or o.waited_on_another(b) or o.overlapped(a, b),
        statement_level_only=True,
    )


def either_after(a: str, b: str) -> Produced:
    return Produced(
        f"one of {a} and {b} reached the database after the other had committed",
        lambda o: o.reached_after(a, b) or o.reached_after(b, a),
    )


async def only_the_stale_row_is_swept(outcome: RaceOutcome) -> None:
    race_premise(outcome)
    stale, fresh = await message_row(outcome), await message_row(outcome, "fresh_id")
    assert stale.status == "aborted", (
        f"expected the stale streaming row 'aborted', found it {stale.status!r}"
    )
    assert fresh.status == "streaming", (
        f"expected another replica's live turn left 'streaming', the sweep set it {fresh.status!r}"
    )
    assert outcome.result("startup") == 1, (
        f"expected the sweep to change exactly the stale row, it changed "
        f"{outcome.result('startup')}"
    )
    if outcome.result("replica") is True:
        assert fresh.content == "live step", (
            f"expected the live replica's step 'live step', found {fresh.content!r}"
        )


def startup_sweep(gap: timedelta) -> Race:
    """A replica starting up sweeps while another streams; `gap` between the stale row and
    the live one."""
    return Race(
        name="startup sweep vs a live turn",
        setup=a_stale_and_a_fresh_row(gap),
        actors={"replica": [step_op("live step", message="fresh_id")], "startup": [SWEEP]},
        produced=(either_after("startup", "replica"), either_overlapped("startup", "replica")),
        check=only_the_stale_row_is_swept,
    )


async def one_of_two_endings(outcome: RaceOutcome) -> None:
    race_premise(outcome)  # a step that landed keeps the row fresh only within the threshold
    message = await message_row(outcome)
    stepped, swept = outcome.result("step"), outcome.result("sweep")
    found = (swept, message.status, message.content)
    if stepped is True:
        assert found == (0, "streaming", "late step"), (
            "the step landed, so expected the row fresh and streaming with it and the sweep to "
            f"change nothing; found sweep={swept}, status {message.status!r}, content "
            f"{message.content!r}"
        )
    else:
        assert found == (1, "aborted", "early"), (
            "the step did not land, so expected the sweep to abort the row without it; found "
            f"sweep={swept}, status {message.status!r}, content {message.content!r}"
        )


def sweep_vs_step(gap: timedelta) -> Race:
    """A sweep and a step on one stale row; `gap` between the row and the race."""
    return Race(
        name="sweep vs step on one row",
        setup=a_stale_row(gap),
        actors={"step": [step_op("late step")], "sweep": [SWEEP]},
        produced=(either_after("step", "sweep"), either_overlapped("step", "sweep")),
        check=one_of_two_endings,
    )


async def finalize_wins(outcome: RaceOutcome) -> None:
    assert outcome.result("finalize") is True, (
        "expected finalize of an existing row to return True, it returned False"
    )
    message = await message_row(outcome)
    assert (message.status, message.content) == ("completed", "final answer"), (
        "expected the finalize to win over the sweep ('completed', 'final answer'); found "
        f"{message.status!r} with content {message.content!r}"
    )


FINALIZE_VS_SWEEP = Race(
    name="finalize vs sweep",
    setup=a_row_stale_at_any_threshold,
    actors={
        "finalize": [finalize_op("final answer", None)],
        "sweep": [Op("sweep_streaming", older_than=STALE_ONLY)],
    },
    produced=(
        Produced(
            "the finalize reached the database after the sweep had aborted the row",
            lambda o: o.reached_after("finalize", "sweep") and o.result("sweep") == 1,
        ),
        either_overlapped("finalize", "sweep"),
    ),
    check=finalize_wins,
)
