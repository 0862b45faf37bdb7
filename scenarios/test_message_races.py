"""Message races, forced: a late step against a finalize, duplicate turn writes, two
finalizes writing usage. Every interleaving runs on a fresh database; each race states
what it must have produced, so a run in which the race never happened is no pass."""

from __future__ import annotations

import pytest

from harness import Message
from harness.race import Op, Produced, Race, RaceOutcome, given, round_robin
from scenarios.support import (
    RACE_WS,
    USAGE_A,
    USAGE_B,
    finalize_op,
    step_op,
    text_parts,
    usage_values,
)

pytestmark = pytest.mark.anyio


async def streaming_message(store, db_clock) -> dict[str, str]:
    chat_id = await store.create_chat(workspace_id=RACE_WS)
    message_id = await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=RACE_WS, turn_id="turn-1"
    )
    assert message_id is not None, "set-up: persist_assistant_shell returned None"
    await store.append_step(
        message_id=message_id, workspace_id=RACE_WS, content="early", parts=text_parts("early")
    )
    return {"chat_id": chat_id, "message_id": message_id}


async def a_chat(store, db_clock) -> dict[str, str]:
    return {"chat_id": await store.create_chat(workspace_id=RACE_WS)}


async def the_message(outcome: RaceOutcome) -> Message:
    row = await outcome.reader_store.get_message(
        message_id=outcome.context["message_id"], workspace_id=RACE_WS
    )
    assert row is not None, "the message is gone"
    return row


# MSG-4: the late step update against the finalize ------------------------------------


async def finalize_was_not_clobbered(outcome: RaceOutcome) -> None:
    row = await the_message(outcome)
    assert (row.status, row.content, row.parts) == (
        "completed",
        "final answer",
        text_parts("final answer"),
    ), f"the finalized row was clobbered: status {row.status!r}, content {row.content!r}"
    usage = await outcome.reader_store.usage_for(message_id=row.id)
    assert [usage_values(u) for u in usage] == [usage_values(USAGE_A)], "usage was lost"
    if outcome.reached_after("step", "finalize"):
        assert outcome.result("step") is False, (
            "append_step reached the database after the finalize committed, yet returned True"
        )


LATE_STEP = Race(
    name="late step vs finalize",
    setup=streaming_message,
    actors={
        "finalize": [finalize_op("final answer", USAGE_A)],
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


@pytest.mark.requirement("MSG-4")
async def test_late_step_never_clobbers_a_finalized_row(race_engine):
    """In every interleaving with a finalize, a step update leaves the finalized row as it is."""
    await race_engine.explore(LATE_STEP)


# MSG-1, MSG-3: concurrent duplicates of one turn -------------------------------------


def one_row_per_turn(role: str, operation: str):
    async def check(outcome: RaceOutcome) -> None:
        writes = outcome.history.operations
        failures = [op.describe() for op in writes if op.outcome != "ok"]
        assert not failures, "a duplicate turn write did not simply return: " + "; ".join(failures)
        ids = {op.result for op in writes}
        assert len(ids) == 1, f"the writers of one turn got different ids: {sorted(ids)}"
        assert None not in ids, f"{operation} returned None for a valid turn"
        rows = await outcome.reader_store.list_messages(
            chat_id=outcome.context["chat_id"], workspace_id=RACE_WS
        )
        turn_rows = [r for r in rows if r.turn_id == "turn-1" and r.role == role]
        assert [r.id for r in turn_rows] == list(ids), (
            f"expected exactly the one {role} row {ids}, found {[r.id for r in turn_rows]}"
        )
        if role == "user":
            texts = {op.arguments["text"] for op in writes}
            assert turn_rows[0].content in texts, f"content {turn_rows[0].content!r} is no one's"
        else:
            assert (turn_rows[0].status, turn_rows[0].content) == ("streaming", "")

    return check


def duplicate_turn_race(operation: str, role: str, writers: int) -> Race:
    names = [f"replica{n}" for n in range(1, writers + 1)]

    def write(name: str) -> Op:
        text = {"text": f"text of {name}"} if role == "user" else {}
        return Op(
            operation, chat_id=given("chat_id"), workspace_id=RACE_WS, turn_id="turn-1", **text
        )

    actors = {name: [write(name)] for name in names}
    return Race(
        name=f"{writers} concurrent {operation}",
        setup=a_chat,
        actors=actors,
        produced=(
            Produced(
                "a writer's insert reached the database after another's had committed",
                lambda o: (
                    o.reached_after(names[1], names[0]) or o.reached_after(names[0], names[1])
                ),
            ),
            Produced(
                "a writer waited on another's uncommitted row",
                lambda o: any(o.waited_on_another(n) for n in names),
                statement_level_only=True,
            ),
        ),
        check=one_row_per_turn(role, operation),
    )


@pytest.mark.requirement("MSG-1")
@pytest.mark.parametrize("writers", [2, 4], ids=lambda n: f"{n}-writers")
async def test_concurrent_user_turns_leave_one_row(race_engine, writers):
    """Concurrent persist_user_turn calls of one turn: one row, one id, no error."""
    race = duplicate_turn_race("persist_user_turn", "user", writers)
    await race_engine.explore(race, schedules=round_robin if writers > 2 else None)


@pytest.mark.requirement("MSG-3")
@pytest.mark.parametrize("writers", [2, 4], ids=lambda n: f"{n}-writers")
async def test_concurrent_assistant_shells_leave_one_row(race_engine, writers):
    """Concurrent persist_assistant_shell calls of one turn: one streaming row, one id."""
    race = duplicate_turn_race("persist_assistant_shell", "assistant", writers)
    await race_engine.explore(race, schedules=round_robin if writers > 2 else None)


# USG-1: two finalizes writing usage for one message ----------------------------------


async def first_committed_usage_stays(outcome: RaceOutcome) -> None:
    for actor in ("first", "second"):
        assert outcome.operations(actor)[0].outcome == "ok", (
            f"a finalize raised: {outcome.operations(actor)[0].describe()}"
        )
    usage = await outcome.reader_store.usage_for(message_id=outcome.context["message_id"])
    winner = outcome.committed_first("first", "second")
    expected = USAGE_A if winner == "first" else USAGE_B
    assert [usage_values(u) for u in usage] == [usage_values(expected)], (
        f"the {winner} finalize committed first, so its usage {usage_values(expected)} "
        f"must be the only row; found {[usage_values(u) for u in usage]}"
    )


USAGE_RACE = Race(
    name="two finalizes with different usage",
    setup=streaming_message,
    actors={
        "first": [finalize_op("answer a", USAGE_A)],
        "second": [finalize_op("answer b", USAGE_B)],
    },
    produced=(
        Produced(
            "a finalize reached the database after the other's had committed",
            lambda o: o.reached_after("second", "first") or o.reached_after("first", "second"),
        ),
        Produced(
            "a finalize waited on the other's uncommitted usage",
            lambda o: o.waited_on_another("first") or o.waited_on_another("second"),
            statement_level_only=True,
        ),
    ),
    check=first_committed_usage_stays,
)


@pytest.mark.requirement("USG-1")
async def test_concurrent_finalizes_keep_the_first_committed_usage(race_engine):
    """Two writers of usage for one message: one row, the first committed, no error."""
    await race_engine.explore(USAGE_RACE)
