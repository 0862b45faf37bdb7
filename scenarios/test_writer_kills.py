"""Writers killed outright: SIGKILL a replica's process between operations, with a statement
held at its gate (its transaction open), or after its commit was sent but before the answer
came back. What returned True survives (DUR-1), nothing is half-written (DUR-2), what the
dead left open stays readable and active until a sweep closes it (DUR-3, RUN-5, RUN-7).
The winner of a concurrent begin killed before its commit is in scenarios.test_run_races.

A replica that dies runs in a process of its own: the adapter's driver, or the Python
worker around an in-process adapter (`open_store(own_process=True)`, `Race(processes=True)`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness import Run, RunAlreadyActive, TurnStore
from harness.driver import DriverExited
from harness.race import Kill, Op, Produced, Race, RaceOutcome, Schedule, Step
from scenarios.support import (
    ACTIVE_RUN_STATUSES,
    FINAL,
    RACE_WS,
    STEPS,
    USAGE_A,
    ConfirmedWrites,
    KillableStore,
    SweepPremise,
    Turn,
    append_steps,
    assistant_row,
    describe_message,
    existing_message,
    finalize_op,
    raised_by,
    step_op,
    streaming_message,
    streaming_turn,
    sweep_premise,
    text_parts,
    usage_values,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


async def killed(writer: TurnStore) -> None:
    """SIGKILL the writer's process, and prove it is gone: it can run nothing more."""
    assert isinstance(writer, KillableStore), (
        f"set-up: expected the writer in a process of its own (with kill()), got {writer!r}"
    )
    await writer.kill()
    with pytest.raises(DriverExited):
        await writer.list_messages(chat_id="after-the-kill", workspace_id="after-the-kill")


# DUR-1: what returned True survives the kill --------------------------------------------


@pytest.mark.requirement("DUR-1a", "DUR-1b")
@pytest.mark.capability("streaming", "usage")
async def test_what_returned_true_survives_the_writers_death(open_store):
    """Steps and a finalize that returned True are all there after the writer is killed."""
    writer = await open_store(name="writer", own_process=True)
    writes = await ConfirmedWrites.make(writer)

    await killed(writer)

    await writes.assert_survived(await open_store(name="reader"), "the writer's death")


@pytest.mark.capability("streaming")
@pytest.mark.parametrize(
    "write",
    [
        pytest.param("append_step", marks=pytest.mark.requirement("DUR-1a")),
        pytest.param(
            "finalize", marks=[pytest.mark.requirement("DUR-1b"), pytest.mark.capability("usage")]
        ),
    ],
)
async def test_a_write_survives_a_kill_right_after_it_returned(open_store, write):
    """The writer is killed right after its last write returned True, with no operation of it
    in between, so no later statement of its own can have committed what that write left open."""
    writer = await open_store(name="writer", own_process=True)
    turn = await streaming_turn(writer)
    if write == "append_step":
        await append_steps(writer, turn, STEPS)
        expected = ("streaming", STEPS[-1], [])
    else:
        await append_steps(writer, turn, STEPS[:1])
        done = await writer.finalize(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            status="completed",
            content=FINAL,
            parts=text_parts(FINAL),
            usage=USAGE_A,
        )
        assert done is True, f"expected finalize of a live streaming row to return True: {done!r}"
        expected = ("completed", FINAL, [usage_values(USAGE_A)])

    await killed(writer)

    reader = await open_store(name="reader")
    after = await assistant_row(reader, turn)
    usage = (
        await reader.usage_for(message_id=turn.assistant_message_id) if write == "finalize" else []
    )
    assert (after.status, after.content, [usage_values(u) for u in usage]) == expected, (
        f"the {write} that returned True right before the writer was killed did not survive: "
        f"{describe_message(after, usage)}"
    )


# RUN-5 and DUR-3/RUN-7: what the dead left open ------------------------------------------


@pytest.mark.requirement("RUN-5c")
@pytest.mark.capability("process")
async def test_a_killed_writers_run_stays_active(open_store):
    """A writer's death neither stops nor finishes its run: the chat stays busy."""
    writer = await open_store(name="writer", own_process=True)
    workspace = "workspace-killed-writer"
    chat = await writer.create_chat(workspace_id=workspace)
    run = await writer.begin_run(chat_id=chat, workspace_id=workspace)

    await killed(writer)

    other = await open_store(name="other")
    latest = await other.latest_run(chat_id=chat, workspace_id=workspace)
    assert latest is not None, f"expected the killed writer's run {run.id!r}, found no run"
    assert (latest.id, latest.status in ACTIVE_RUN_STATUSES, latest.stop_requested) == (
        run.id,
        True,
        False,
    ), (
        f"expected the killed writer's run {run.id!r} still active and not stop-requested, "
        f"found run {latest.id!r} status {latest.status!r}, stop requested "
        f"{latest.stop_requested}"
    )
    await raised_by(
        RunAlreadyActive,
        other.begin_run(chat_id=chat, workspace_id=workspace),
        "begin_run on the chat of the killed writer's still active run",
    )


@pytest.mark.requirement("DUR-3a", "DUR-3b", "SWP-4b", "RUN-7b")
@pytest.mark.capability("streaming", "sweep", "runs")
async def test_a_killed_writers_turn_stays_readable_until_swept(open_store, db_clock):
    """Killed mid-turn: its steps stay readable; once stale, the sweeps close its message and
    its run, and spare a live writer's turn whose steps keep it fresh."""
    live = await open_store(name="live")
    reader = await open_store(name="reader")

    async def attempt(premise: SweepPremise):
        dead = await open_store(name="dead", own_process=True)
        turns: dict[str, tuple[Turn, Run]] = {}
        for name, writer in (("dead", dead), ("live", live)):
            turn = await streaming_turn(writer)
            run = await writer.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
            assert await writer.link_assistant(
                run_id=run.id, message_id=turn.assistant_message_id
            ), "set-up: link_assistant of a new run to its chat's message returned False"
            await append_steps(writer, turn, STEPS[:2])
            assert await writer.record_step(run_id=run.id), "set-up: record_step returned False"
            turns[name] = (turn, run)

        await killed(dead)

        before = await assistant_row(reader, turns["dead"][0])
        assert (before.status, before.content) == ("streaming", STEPS[1]), (
            f"the dead writer's finished steps are not readable: {describe_message(before)}"
        )
        live_turn, live_run = turns["live"]
        await premise.pass_gap()
        await append_steps(live, live_turn, STEPS[2:])
        assert await live.record_step(run_id=live_run.id), (
            "expected record_step of the live writer's active run to return True"
        )
        swept_messages = await premise.sweep(reader.sweep_streaming)
        return turns, swept_messages, await premise.sweep(reader.sweep_runs)

    turns, swept_messages, swept_runs = await sweep_premise(
        db_clock, attempt, settle=[reader.sweep_streaming, reader.sweep_runs]
    )
    dead_turn, dead_run = turns["dead"]
    live_turn, live_run = turns["live"]

    after = await assistant_row(reader, dead_turn)
    assert (after.status, after.content) == ("aborted", STEPS[1]), (
        f"the sweep did not close the dead writer's message, steps kept: {describe_message(after)}"
    )
    dead_after = await reader.latest_run(
        chat_id=dead_turn.chat_id, workspace_id=dead_turn.workspace_id
    )
    live_after = await reader.latest_run(
        chat_id=live_turn.chat_id, workspace_id=live_turn.workspace_id
    )
    assert dead_after is not None, f"expected the dead writer's run {dead_run.id!r}: no run"
    assert (dead_after.id, dead_after.status) == (dead_run.id, "aborted"), (
        f"expected the sweep to close the dead writer's run {dead_run.id!r} ('aborted'), found "
        f"run {dead_after.id!r} {dead_after.status!r}"
    )
    assert live_after is not None, f"expected the live writer's run {live_run.id!r}: no run"
    assert live_after.status in ACTIVE_RUN_STATUSES, (
        f"expected the run a live writer kept fresh to stay active, found {live_after.status!r}"
    )
    live_row = await assistant_row(reader, live_turn)
    assert live_row.status == "streaming", (
        f"expected the live turn still 'streaming', found {describe_message(live_row)}"
    )
    assert (swept_messages, swept_runs) == (1, 1), (
        f"expected each sweep to close the dead writer's one message and one run (1, 1), got "
        f"sweep_streaming {swept_messages}, sweep_runs {swept_runs}"
    )


# DUR-2: killed in the middle of an operation ---------------------------------------------


async def landed_whole_or_not_at_all(outcome: RaceOutcome) -> None:
    """The operation the kill interrupted happened entirely, or not at all."""
    (attempt,) = outcome.operations("writer")
    reader = outcome.reader_store
    message_id = outcome.context["message_id"]
    found = await existing_message(reader, message_id, RACE_WS, "writer's assistant message")
    usage = await reader.usage_for(message_id=message_id) if attempt.operation == "finalize" else []
    untouched = found == outcome.context["before"] and usage == []
    if attempt.operation == "finalize":
        whole = (found.status, found.content, [usage_values(u) for u in usage]) == (
            "completed",
            FINAL,
            [usage_values(USAGE_A)],
        )
    else:
        whole = (found.status, found.content, usage) == ("streaming", STEPS[0], [])
    assert whole or untouched, (
        f"{attempt.describe_message()}, killed mid-operation, left a partial write: "
        f"{describe_message(found, usage)}; expected all of it or none of it"
    )


def kill_at_every_step(after_send: bool) -> Callable[[dict[str, int]], list[Schedule]]:
    """The writer takes k steps (statements sent, commits let through), then dies."""

    def schedules(steps: dict[str, int]) -> list[Schedule]:
        death = Kill("writer", after_send=after_send)
        return [(Step("writer"),) * k + (death,) for k in range(steps["writer"])]

    return schedules


OPERATIONS = {
    "finalize": finalize_op(FINAL, USAGE_A),
    "append_step": step_op(STEPS[0]),
}


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming")
@pytest.mark.parametrize(
    "operation",
    [pytest.param("finalize", marks=pytest.mark.capability("usage")), "append_step"],
)
@pytest.mark.parametrize(
    "after_send", [False, True], ids=["killed-holding-a-statement", "killed-after-sending-it"]
)
async def test_a_writer_killed_mid_operation_leaves_no_partial_write(
    race_engine, operation, after_send
):
    """Killed before each statement and before each commit, or after sending it: whole or
    nothing, and whatever returned is there."""
    op: Op = OPERATIONS[operation]
    race = Race(
        name=f"{operation} killed mid-operation ({'after sending' if after_send else 'held'})",
        setup=streaming_message,
        actors={"writer": [op]},
        produced=(
            Produced(
                "the writer died with a statement of its operation unanswered",
                lambda o: o.died_uncommitted("writer"),
            ),
        ),
        check=landed_whole_or_not_at_all,
        processes=True,
    )
    await race_engine.explore(race, schedules=kill_at_every_step(after_send))
