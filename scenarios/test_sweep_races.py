"""Sweep races, forced: a replica's startup sweep against another replica's live turn,
a sweep against a step on the same stale row, and a finalize against a sweep.

Staleness comes from the database clock: each setup lets STALE pass on it, and the
premise that a row is still fresh when the sweep runs is proved, not assumed."""

from __future__ import annotations

import pytest

from harness import Message
from harness.errors import ScenarioPremiseError
from harness.race import Op, Produced, Race, RaceOutcome
from scenarios.support import (
    RACE_WS,
    STALE,
    USAGE_A,
    finalize_op,
    step_op,
    text_parts,
    usage_values,
)

pytestmark = pytest.mark.anyio

SWEEP = Op("sweep_streaming", older_than=STALE)


async def streaming_row(store, chat_id: str, turn_id: str) -> str:
    message_id = await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=RACE_WS, turn_id=turn_id
    )
    assert message_id is not None, "set-up: persist_assistant_shell returned None"
    await store.append_step(
        message_id=message_id, workspace_id=RACE_WS, content="early", parts=text_parts("early")
    )
    return message_id


async def a_stale_row(store, db_clock) -> dict[str, object]:
    chat_id = await store.create_chat(workspace_id=RACE_WS)
    message_id = await streaming_row(store, chat_id, "turn-1")
    await db_clock.let_pass(STALE)
    return {"chat_id": chat_id, "message_id": message_id}


async def a_stale_and_a_fresh_row(store, db_clock) -> dict[str, object]:
    context = await a_stale_row(store, db_clock)
    context["fresh_since"] = await db_clock.now()
    context["fresh_id"] = await streaming_row(store, context["chat_id"], "turn-2")  # type: ignore[arg-type]
    return context


async def row(outcome: RaceOutcome, key: str) -> Message:
    message = await outcome.reader_store.get_message(
        message_id=outcome.context[key], workspace_id=RACE_WS
    )
    assert message is not None, f"the {key} row is gone"
    return message


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


# SWP-1, SWP-2: a startup sweep against another replica's live turn -------------------


async def only_the_stale_row_is_swept(outcome: RaceOutcome) -> None:
    took = outcome.finished_at - outcome.context["fresh_since"]  # type: ignore[operator]
    if took >= STALE:
        raise ScenarioPremiseError(
            f"the interleaving took {took.total_seconds():.3f} s of database time, so the "
            "fresh row was no longer fresh; no verdict"
        )
    stale, fresh = await row(outcome, "message_id"), await row(outcome, "fresh_id")
    assert stale.status == "aborted", f"the stale streaming row was left {stale.status!r}"
    assert fresh.status == "streaming", (
        f"the startup sweep set another replica's live turn to {fresh.status!r}"
    )
    assert outcome.result("startup") == 1, (
        f"the sweep changed {outcome.result('startup')} rows; exactly the stale one was due"
    )
    if outcome.result("replica") is True:
        assert fresh.content == "live step", "the live replica's step was lost"


@pytest.mark.requirement("SWP-1", "SWP-2")
async def test_startup_sweep_spares_a_live_turn_of_another_replica(race_engine):
    """One replica streams while another starts up and sweeps: only the stale row is aborted."""
    await race_engine.explore(
        Race(
            name="startup sweep vs a live turn",
            setup=a_stale_and_a_fresh_row,
            actors={
                "replica": [step_op("live step", message="fresh_id")],
                "startup": [SWEEP],
            },
            produced=(either_after("startup", "replica"), either_overlapped("startup", "replica")),
            check=only_the_stale_row_is_swept,
        )
    )


# SWP-4: a sweep and a step on the same stale row --------------------------------------


async def one_of_two_endings(outcome: RaceOutcome) -> None:
    message = await row(outcome, "message_id")
    stepped, swept = outcome.result("step"), outcome.result("sweep")
    if stepped is True:
        assert (swept, message.status, message.content) == (0, "streaming", "late step"), (
            f"the step landed, so the row must be fresh and streaming with it and the sweep "
            f"must have changed nothing; got sweep={swept}, status {message.status!r}, "
            f"content {message.content!r}"
        )
    else:
        assert (swept, message.status, message.content) == (1, "aborted", "early"), (
            f"the step did not land, so the sweep must have aborted the row without it; got "
            f"sweep={swept}, status {message.status!r}, content {message.content!r}"
        )


@pytest.mark.requirement("SWP-4")
async def test_sweep_and_step_on_one_row_end_in_one_of_two_states(race_engine):
    """Sweep vs step on a stale row: fresh and streaming with the step, or aborted without."""
    await race_engine.explore(
        Race(
            name="sweep vs step on one row",
            setup=a_stale_row,
            actors={
                "step": [step_op("late step")],
                "sweep": [SWEEP],
            },
            produced=(either_after("step", "sweep"), either_overlapped("step", "sweep")),
            check=one_of_two_endings,
        )
    )


# MSG-6: a finalize against a sweep of the same row ------------------------------------


async def finalize_wins(outcome: RaceOutcome) -> None:
    assert outcome.result("finalize") is True, "finalize of an existing row returned False"
    message = await row(outcome, "message_id")
    assert (message.status, message.content) == ("completed", "final answer"), (
        f"the finalize must win over the sweep; the row is {message.status!r} "
        f"with content {message.content!r}"
    )
    usage = await outcome.reader_store.usage_for(message_id=message.id)
    assert [usage_values(u) for u in usage] == [usage_values(USAGE_A)]


@pytest.mark.requirement("MSG-6")
async def test_finalize_wins_over_a_concurrent_sweep(race_engine):
    """Whatever the order, the finalized content and status stand, also over 'aborted'."""
    await race_engine.explore(
        Race(
            name="finalize vs sweep",
            setup=a_stale_row,
            actors={
                "finalize": [finalize_op("final answer", USAGE_A)],
                "sweep": [SWEEP],
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
    )
