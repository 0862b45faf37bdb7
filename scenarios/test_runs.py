"""Runs: one active run per chat, finishing, stopping, reconnecting, sweeping (RUN-1 .. RUN-7).

The sequential forms; concurrent begins (RUN-1 under load, RUN-3) run under the
race engine.
"""

from __future__ import annotations

import pytest

from harness import InvalidArgument, Run, RunAlreadyActive, TurnStore

from .support import (
    ACTIVE_RUN_STATUSES,
    SKEW,
    TERMINAL_RUN_STATUSES,
    SweepPremise,
    assert_not_run_already_active,
    begin_failure,
    missing_id_like,
    new_workspace,
    raised_by,
    skewed_clock,
    streaming_turn,
    sweep_premise,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


async def new_chat(store: TurnStore, workspace_id: str | None = None) -> tuple[str, str]:
    ws = workspace_id or new_workspace()
    return ws, await store.create_chat(workspace_id=ws)


async def latest(store: TurnStore, ws: str, chat: str) -> Run:
    run = await store.latest_run(chat_id=chat, workspace_id=ws)
    assert run is not None, f"latest_run found no run for chat {chat!r}"
    return run


async def run_of(store: TurnStore, run: Run) -> Run:
    """The stored state of `run`, which must still be its chat's latest run."""
    current = await latest(store, run.workspace_id, run.chat_id)
    assert current.id == run.id, (
        f"expected latest_run to return run {run.id!r}, got {describe_run(current)}"
    )
    return current


def describe_run(run: Run | None) -> str:
    """A run in words, for assertion messages."""
    if run is None:
        return "no run"
    return (
        f"run {run.id!r} status {run.status!r}, message {run.assistant_message_id!r}, "
        f"{run.step_count} steps, stop requested {run.stop_requested}"
    )


async def assert_active(store: TurnStore, run: Run, why: str) -> Run:
    current = await run_of(store, run)
    assert current.status in ACTIVE_RUN_STATUSES, (
        f"expected run {run.id!r} active ({why}), found {describe_run(current)}"
    )
    return current


async def finished(store: TurnStore, run: Run, status: str) -> None:
    """finish_run of an active run, which must apply."""
    done = await store.finish_run(run_id=run.id, status=status)
    assert done is True, (
        f"expected finish_run({status!r}) of the active run {run.id!r} to return True, got {done!r}"
    )


async def linked(store: TurnStore, run: Run, message_id: str) -> None:
    """link_assistant of an active run to a message of its chat, which must apply."""
    done = await store.link_assistant(run_id=run.id, message_id=message_id)
    assert done is True, (
        f"expected link_assistant of run {run.id!r} to {message_id!r} to return True: {done!r}"
    )


async def stepped(store: TurnStore, run: Run) -> None:
    """record_step of an active run, which must apply."""
    done = await store.record_step(run_id=run.id)
    assert done is True, f"expected record_step of active run {run.id!r} to return True: {done!r}"


async def assert_no_run(store: TurnStore, chat: str, ws: str, why: str) -> None:
    run = await store.latest_run(chat_id=chat, workspace_id=ws)
    assert run is None, f"expected no run of chat {chat!r} ({why}), found {describe_run(run)}"


# --- RUN-1 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-1a")
async def test_begin_starts_an_active_run(store):
    """begin_run returns an active run of the chat with no steps, no link and no stop request."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert run.status in ACTIVE_RUN_STATUSES, f"expected a new run active, found {run.status!r}"
    assert (run.chat_id, run.workspace_id, run.trigger) == (chat, ws, "user"), (
        f"expected a run of chat {chat!r} in workspace {ws!r} with trigger 'user', found chat "
        f"{run.chat_id!r}, workspace {run.workspace_id!r}, trigger {run.trigger!r}"
    )
    assert (run.assistant_message_id, run.step_count, run.stop_requested) == (None, 0, False), (
        f"expected a new run with no message, no steps, no stop request: {describe_run(run)}"
    )
    stored = await run_of(store, run)
    assert stored == run, (
        f"expected latest_run to read back what begin_run returned, {describe_run(run)}; "
        f"found {describe_run(stored)}"
    )


@pytest.mark.requirement("RUN-1b")
async def test_second_begin_raises_run_already_active(store, open_store):
    """While a run is active, begin_run on that chat (any replica) raises RunAlreadyActive."""
    ws, chat = await new_chat(store)
    first = await store.begin_run(chat_id=chat, workspace_id=ws)
    other = await open_store(name="replica-b")
    for replica in (store, other):
        conflict = await raised_by(
            RunAlreadyActive,
            replica.begin_run(chat_id=chat, workspace_id=ws),
            "a second begin_run while a run is active",
        )
        assert conflict.chat_id == chat, (
            f"expected RunAlreadyActive to carry chat id {chat!r}, found {conflict.chat_id!r}"
        )
    current = await latest(store, ws, chat)
    assert (current.id, current.status) == (first.id, first.status), (
        f"expected the first run {first.id!r} still the active one, found {describe_run(current)}"
    )


@pytest.mark.requirement("RUN-1d")
async def test_one_active_run_rule_is_per_chat(store):
    """Other chats, in the same workspace or not, can each have their own active run."""
    ws, chat_1 = await new_chat(store)
    _, chat_2 = await new_chat(store, ws)
    other_ws, chat_3 = await new_chat(store)
    runs = [
        await store.begin_run(chat_id=chat_1, workspace_id=ws),
        await store.begin_run(chat_id=chat_2, workspace_id=ws),
        await store.begin_run(chat_id=chat_3, workspace_id=other_ws),
    ]
    assert len({r.id for r in runs}) == 3, (
        f"expected three distinct runs, found ids {[r.id for r in runs]}"
    )
    for run in runs:
        await assert_active(store, run, "each chat has its own one active run")


# --- RUN-2 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-2a")
async def test_begin_on_missing_chat_is_not_a_conflict(store):
    """begin_run on a chat that does not exist raises its own error and leaves no run."""
    ws, chat = await new_chat(store)
    missing = missing_id_like(chat)
    error = await begin_failure(store, chat_id=missing, workspace_id=ws)
    assert_not_run_already_active(error, "the chat does not exist")
    await assert_no_run(store, missing, ws, "the begin on a missing chat failed")


@pytest.mark.requirement("RUN-2a", "WS-1b")
async def test_begin_in_other_workspace_is_not_a_conflict(store):
    """begin_run on another workspace's chat raises its own error and leaves no run behind."""
    ws, chat = await new_chat(store)
    foreign = new_workspace()
    error = await begin_failure(store, chat_id=chat, workspace_id=foreign)
    assert_not_run_already_active(error, "the chat belongs to another workspace")
    await assert_no_run(store, chat, foreign, "the foreign begin failed")
    await assert_no_run(store, chat, ws, "the foreign begin failed and left nothing")
    # Nothing was left behind to block the owner.
    owner_run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert owner_run.status in ACTIVE_RUN_STATUSES, (
        f"expected the owner's begin_run to start an active run, got {describe_run(owner_run)}"
    )


# --- RUN-4 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-4a", "RUN-4b")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_finish_run_ends_the_run_once(store, status):
    """finish_run ends an active run (True); again it returns False and changes nothing."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    await finished(store, run, status)
    ended = await run_of(store, run)
    assert ended.status == status, f"expected the run {status!r}, found {describe_run(ended)}"
    for again in TERMINAL_RUN_STATUSES:
        repeated = await store.finish_run(run_id=run.id, status=again)
        assert repeated is False, (
            f"expected finish_run({again!r}) on a {status!r} run to return False, got {repeated!r}"
        )
    after = await run_of(store, run)
    assert after == ended, (
        f"expected finishing a terminal run to change nothing, but it went from "
        f"{describe_run(ended)} to {describe_run(after)}"
    )


@pytest.mark.requirement("RUN-4c")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_begin_after_finish_starts_a_new_run(store, status):
    """After finish_run, a new begin_run on the chat succeeds with a new run."""
    ws, chat = await new_chat(store)
    first = await store.begin_run(chat_id=chat, workspace_id=ws)
    await finished(store, first, status)
    second = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert second.id != first.id, f"expected a new run, got the finished one {first.id!r} again"
    await assert_active(store, second, "it was begun after the first finished")


@pytest.mark.requirement("RUN-4a")
@pytest.mark.parametrize("status", ["pending", "running", "completed", "done", "", "SUCCEEDED"])
async def test_finish_run_rejects_unknown_status(store, status):
    """finish_run with a non-terminal or unknown status raises InvalidArgument, no change."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    before = await run_of(store, run)
    await raised_by(
        InvalidArgument,
        store.finish_run(run_id=run.id, status=status),
        f"finish_run(status={status!r})",
    )
    after = await run_of(store, run)
    assert after == before, (
        f"expected the rejected finish_run(status={status!r}) to change nothing, but the run "
        f"went from {describe_run(before)} to {describe_run(after)}"
    )


# --- RUN-5 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-5a")
async def test_request_stop_flags_without_ending(store):
    """request_stop marks an active run stop-requested; it stays active until finished."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    stopped = await store.request_stop(run_id=run.id)
    assert stopped is True, f"expected request_stop of an active run to return True: {stopped!r}"
    stopping = await assert_active(store, run, "request_stop does not end it")
    assert stopping.stop_requested is True, (
        f"expected the run stop-requested, found {describe_run(stopping)}"
    )
    await finished(store, run, "aborted")
    ended = await run_of(store, run)
    assert ended.status == "aborted", f"expected the run 'aborted', found {describe_run(ended)}"


@pytest.mark.requirement("RUN-5b")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_request_stop_on_terminal_run_returns_false(store, status):
    """request_stop on a finished run returns False and changes nothing."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    await finished(store, run, status)
    ended = await run_of(store, run)
    stopped = await store.request_stop(run_id=run.id)
    assert stopped is False, (
        f"expected request_stop on a {status!r} run to return False: {stopped!r}"
    )
    after = await run_of(store, run)
    assert after == ended, (
        f"expected request_stop on a {status!r} run to change nothing, but it went from "
        f"{describe_run(ended)} to {describe_run(after)}"
    )


@pytest.mark.requirement("RUN-5c")
async def test_disconnect_does_not_end_the_run(adapter, turn_dsn, store):
    """A replica that begins a run and disconnects leaves the run active and not stop-requested."""
    ws, chat = await new_chat(store)
    writer = await adapter.connect(turn_dsn)
    try:
        run = await writer.begin_run(chat_id=chat, workspace_id=ws)
    finally:
        await writer.aclose()
    after = await assert_active(store, run, "a disconnect ends nothing")
    assert after.stop_requested is False, (
        f"expected no stop request after a disconnect, found {describe_run(after)}"
    )
    # Anyone may still finish it.
    await finished(store, run, "failed")


@pytest.mark.requirement("RUN-5d", "RUN-5a")
async def test_stop_request_survives_later_writes_to_the_run(store):
    """Once requested, the stop stays set through record_step, link_assistant and a second
    request_stop, as latest_run reads it after each (a toggling or resetting write clears it)."""
    turn = await streaming_turn(store)
    run = await store.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    stopped = await store.request_stop(run_id=run.id)
    assert stopped is True, f"expected request_stop of an active run to return True: {stopped!r}"
    writes = (
        ("record_step", lambda: stepped(store, run)),
        ("link_assistant", lambda: linked(store, run, turn.assistant_message_id)),
        ("a second request_stop", lambda: store.request_stop(run_id=run.id)),
        ("record_step again", lambda: stepped(store, run)),
    )
    for what, write in writes:
        await write()
        current = await assert_active(store, run, f"only its owner ends it, also after {what}")
        assert current.stop_requested is True, (
            f"expected the stop request still set after {what}, found {describe_run(current)}"
        )


# --- RUN-6 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-6a")
async def test_latest_run_carries_link_and_step_count(store):
    """latest_run shows the linked assistant message and the number of recorded steps."""
    turn = await streaming_turn(store)
    run = await store.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    await linked(store, run, turn.assistant_message_id)
    for _ in range(3):
        await stepped(store, run)
    current = await assert_active(store, run, "it was not finished yet")
    assert (current.assistant_message_id, current.step_count) == (turn.assistant_message_id, 3), (
        f"expected the run linked to {turn.assistant_message_id!r} with 3 steps, found "
        f"{describe_run(current)}"
    )
    await finished(store, run, "succeeded")
    ended = await run_of(store, run)
    assert (ended.status, ended.assistant_message_id, ended.step_count) == (
        "succeeded",
        turn.assistant_message_id,
        3,
    ), f"expected the finished run to keep its link and 3 steps, found {describe_run(ended)}"


@pytest.mark.requirement("RUN-6a", "RUN-6b", "RUN-4c")
async def test_latest_run_is_the_newest(store):
    """Of several runs of a chat, latest_run returns the newest, with its own link and steps."""
    ws, chat = await new_chat(store)
    expected = []
    for index, status in enumerate(("succeeded", "failed", None)):
        turn = await streaming_turn(store, workspace_id=ws, chat_id=chat)
        run = await store.begin_run(chat_id=chat, workspace_id=ws)
        await linked(store, run, turn.assistant_message_id)
        for _ in range(index + 1):
            await stepped(store, run)
        expected.append((run.id, turn.assistant_message_id, index + 1))
        current = await latest(store, ws, chat)
        assert (current.id, current.assistant_message_id, current.step_count) == expected[-1], (
            f"expected the run just begun (id, message, steps) {expected[-1]}, found "
            f"{describe_run(current)}"
        )
        if status is not None:
            await finished(store, run, status)
    current = await latest(store, ws, chat)
    assert (current.id, current.assistant_message_id, current.step_count) == expected[-1], (
        "latest_run did not return the newest run"
    )


@pytest.mark.requirement("RUN-6b")
async def test_latest_run_order_follows_database_clock(open_store):
    """A run begun later is the latest even when its replica's clock runs far behind."""
    ahead = await open_store(clock=skewed_clock(SKEW), name="replica-ahead")
    behind = await open_store(clock=skewed_clock(-SKEW), name="replica-behind")
    ws, chat = await new_chat(ahead)
    first = await ahead.begin_run(chat_id=chat, workspace_id=ws)
    await finished(ahead, first, "succeeded")
    second = await behind.begin_run(chat_id=chat, workspace_id=ws)
    for replica in (ahead, behind):
        current = await latest(replica, ws, chat)
        assert current.id == second.id, (
            f"expected the run begun last, {second.id!r}, but latest_run returned the older run "
            f"{current.id!r} begun by the replica whose clock runs ahead"
        )


@pytest.mark.requirement("RUN-6d")
async def test_latest_run_of_chat_without_runs_is_none(store):
    """latest_run of a chat that never had a run returns None, also when another chat of
    its workspace has one."""
    ws, chat = await new_chat(store)
    await assert_no_run(store, chat, ws, "the chat never had one")
    _, busy_chat = await new_chat(store, ws)
    await store.begin_run(chat_id=busy_chat, workspace_id=ws)
    await assert_no_run(store, chat, ws, "the chat never had one, only another chat of it")


@pytest.mark.requirement("RUN-6c")
async def test_late_write_to_an_older_run_does_not_make_it_latest(store):
    """Runs begun A then B: a link_assistant and a record_step to A after B began (applied or
    refused, as the store decides for a finished run) leave B the latest run: latest means
    begun last, not written last."""
    ws, chat = await new_chat(store)
    first_turn = await streaming_turn(store, workspace_id=ws, chat_id=chat)
    older = await store.begin_run(chat_id=chat, workspace_id=ws)
    await finished(store, older, "succeeded")
    newer = await store.begin_run(chat_id=chat, workspace_id=ws)
    await store.link_assistant(run_id=older.id, message_id=first_turn.assistant_message_id)
    await store.record_step(run_id=older.id)
    current = await latest(store, ws, chat)
    assert current.id == newer.id, (
        f"expected the run begun last, {newer.id!r}, still the latest after a late write to "
        f"the older run {older.id!r}; latest_run returned {describe_run(current)}"
    )
    assert (current.assistant_message_id, current.step_count) == (None, 0), (
        f"expected the latest run untouched by writes to the older one: {describe_run(current)}"
    )


# --- RUN-7 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-7a", "RUN-1d")
async def test_sweep_runs_aborts_stale_active_runs_only(store, db_clock):
    """sweep_runs aborts the stale active runs of every workspace, counts them, spares the rest."""

    async def attempt(premise: SweepPremise):
        ws_a, chat_a = await new_chat(store)
        ws_b, chat_b = await new_chat(store)
        _, chat_done = await new_chat(store, ws_a)
        _, chat_fresh = await new_chat(store, ws_b)
        stale = [
            await store.begin_run(chat_id=chat_a, workspace_id=ws_a),
            await store.begin_run(chat_id=chat_b, workspace_id=ws_b),
        ]
        done = await store.begin_run(chat_id=chat_done, workspace_id=ws_a)
        await finished(store, done, "succeeded")
        done_before = await run_of(store, done)
        await premise.pass_gap()
        fresh = await store.begin_run(chat_id=chat_fresh, workspace_id=ws_b)
        fresh_before = await run_of(store, fresh)
        swept = await premise.sweep(store.sweep_runs)
        return ws_a, chat_a, stale, done, done_before, fresh, fresh_before, swept

    ws_a, chat_a, stale, done, done_before, fresh, fresh_before, swept = await sweep_premise(
        db_clock, attempt, settle=[store.sweep_runs]
    )

    for run, before, what in (
        (fresh, fresh_before, "fresh active"),
        (done, done_before, "finished"),
    ):
        after = await run_of(store, run)
        assert after == before, (
            f"expected sweep_runs to leave a {what} run alone, but it went from "
            f"{describe_run(before)} to {describe_run(after)}"
        )
    for run in stale:
        after = await run_of(store, run)
        assert after.status == "aborted", (
            f"expected the stale active run swept to 'aborted', found {describe_run(after)}"
        )
    assert swept == 2, f"expected sweep_runs to return 2 (the stale active runs), got {swept}"
    # The swept runs no longer block their chats.
    restarted = await store.begin_run(chat_id=chat_a, workspace_id=ws_a)
    await assert_active(store, restarted, "begun after the sweep ended the stale one")


@pytest.mark.requirement("RUN-7a", "RUN-7b", "RUN-1d")
async def test_record_step_keeps_a_run_fresh(store, db_clock):
    """record_step on a run that had gone stale refreshes it, so the sweep leaves it active."""

    async def attempt(premise: SweepPremise):
        ws, chat_kept = await new_chat(store)
        _, chat_idle = await new_chat(store, ws)
        kept = await store.begin_run(chat_id=chat_kept, workspace_id=ws)
        idle = await store.begin_run(chat_id=chat_idle, workspace_id=ws)
        await premise.pass_gap()
        refreshed = await store.record_step(run_id=kept.id)
        return kept, idle, refreshed, await premise.sweep(store.sweep_runs)

    kept, idle, refreshed, swept = await sweep_premise(db_clock, attempt, settle=[store.sweep_runs])

    assert refreshed is True, (
        f"expected record_step on a stale but active run to return True, got {refreshed!r}"
    )
    after = await assert_active(store, kept, "record_step had just refreshed it")
    assert after.step_count == 1, f"expected 1 recorded step, found {describe_run(after)}"
    idle_after = await run_of(store, idle)
    assert idle_after.status == "aborted", (
        f"set-up: expected the idle run swept to 'aborted', found {describe_run(idle_after)}"
    )
    assert swept == 1, f"expected sweep_runs to return 1 (the idle run), got {swept}"


@pytest.mark.requirement("RUN-7b", "RUN-7c", "RUN-1d")
@pytest.mark.parametrize(
    ("writer_offset", "sweeper_offset"),
    [(SKEW, -SKEW), (-SKEW, SKEW)],
    ids=["writer-ahead-sweeper-behind", "writer-behind-sweeper-ahead"],
)
async def test_run_staleness_is_judged_by_database_clock(
    open_store, db_clock, writer_offset, sweeper_offset
):
    """Replicas whose clocks are minutes off neither sweep fresh runs nor spare stale ones."""
    writer = await open_store(clock=skewed_clock(writer_offset), name="writer")
    sweeper = await open_store(clock=skewed_clock(sweeper_offset), name="sweeper")

    async def attempt(premise: SweepPremise):
        ws, chat_stale = await new_chat(writer)
        _, chat_stepped = await new_chat(writer, ws)
        _, chat_fresh = await new_chat(writer, ws)
        stale = await writer.begin_run(chat_id=chat_stale, workspace_id=ws)
        kept = await writer.begin_run(chat_id=chat_stepped, workspace_id=ws)
        await premise.pass_gap()
        fresh = await writer.begin_run(chat_id=chat_fresh, workspace_id=ws)
        await stepped(writer, kept)
        return stale, kept, fresh, await premise.sweep(sweeper.sweep_runs)

    stale, kept, fresh, swept = await sweep_premise(db_clock, attempt, settle=[sweeper.sweep_runs])

    for run in (fresh, kept):
        await assert_active(store=writer, run=run, why="it was fresh by the database clock")
    stale_after = await run_of(writer, stale)
    assert stale_after.status == "aborted", (
        "expected the stale run 'aborted', but it was spared (staleness was not judged by the "
        f"database clock): {describe_run(stale_after)}"
    )
    assert swept == 1, f"expected sweep_runs to return 1 (the stale run), got {swept}"
