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
    STALE,
    TERMINAL_RUN_STATUSES,
    assert_not_run_already_active,
    begin_failure,
    missing_id_like,
    new_workspace,
    skewed_clock,
    streaming_turn,
)

pytestmark = pytest.mark.anyio


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
    assert current.id == run.id, f"latest_run returned run {current.id!r}, expected {run.id!r}"
    return current


# --- RUN-1 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-1")
async def test_begin_starts_an_active_run(store):
    """begin_run returns an active run of the chat with no steps, no link and no stop request."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert run.status in ACTIVE_RUN_STATUSES, f"a new run has status {run.status!r}"
    assert (run.chat_id, run.workspace_id, run.trigger) == (chat, ws, "user")
    assert (run.assistant_message_id, run.step_count, run.stop_requested) == (None, 0, False)
    assert await run_of(store, run) == run


@pytest.mark.requirement("RUN-1")
async def test_second_begin_raises_run_already_active(store, open_store):
    """While a run is active, begin_run on that chat (any replica) raises RunAlreadyActive."""
    ws, chat = await new_chat(store)
    first = await store.begin_run(chat_id=chat, workspace_id=ws)
    other = await open_store(name="replica-b")
    for replica in (store, other):
        with pytest.raises(RunAlreadyActive) as raised:
            await replica.begin_run(chat_id=chat, workspace_id=ws)
        assert raised.value.chat_id == chat, (
            f"RunAlreadyActive carries chat id {raised.value.chat_id!r}, expected {chat!r}"
        )
    current = await latest(store, ws, chat)
    assert (current.id, current.status) == (first.id, first.status), (
        f"the active run is no longer the first one: {current}"
    )


@pytest.mark.requirement("RUN-1")
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
    assert len({r.id for r in runs}) == 3
    for run in runs:
        current = await run_of(store, run)
        assert current.status in ACTIVE_RUN_STATUSES


# --- RUN-2 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-2")
async def test_begin_on_missing_chat_is_not_a_conflict(store):
    """begin_run on a chat that does not exist raises its own error and leaves no run."""
    ws, chat = await new_chat(store)
    missing = missing_id_like(chat)
    error = await begin_failure(store, chat_id=missing, workspace_id=ws)
    assert_not_run_already_active(error, "the chat does not exist")
    assert await store.latest_run(chat_id=missing, workspace_id=ws) is None


@pytest.mark.requirement("RUN-2", "WS-1")
async def test_begin_in_other_workspace_is_not_a_conflict(store):
    """begin_run on another workspace's chat raises its own error and leaves no run behind."""
    ws, chat = await new_chat(store)
    foreign = new_workspace()
    error = await begin_failure(store, chat_id=chat, workspace_id=foreign)
    assert_not_run_already_active(error, "the chat belongs to another workspace")
    assert await store.latest_run(chat_id=chat, workspace_id=foreign) is None
    assert await store.latest_run(chat_id=chat, workspace_id=ws) is None, (
        "the failed foreign begin left a run on the chat"
    )
    # Nothing was left behind to block the owner.
    owner_run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert owner_run.status in ACTIVE_RUN_STATUSES


# --- RUN-4 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-4")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_finish_run_ends_the_run_once(store, status):
    """finish_run ends an active run (True); again it returns False and changes nothing."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert await store.finish_run(run_id=run.id, status=status) is True
    finished = await run_of(store, run)
    assert finished.status == status
    for again in TERMINAL_RUN_STATUSES:
        repeated = await store.finish_run(run_id=run.id, status=again)
        assert repeated is False, f"finish_run({again!r}) on a {status!r} run returned {repeated!r}"
    assert await run_of(store, run) == finished, "finishing a terminal run changed it"


@pytest.mark.requirement("RUN-4")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_begin_after_finish_starts_a_new_run(store, status):
    """After finish_run, a new begin_run on the chat succeeds with a new run."""
    ws, chat = await new_chat(store)
    first = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert await store.finish_run(run_id=first.id, status=status) is True
    second = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert second.id != first.id
    assert second.status in ACTIVE_RUN_STATUSES
    assert (await latest(store, ws, chat)).id == second.id


@pytest.mark.requirement("RUN-4")
@pytest.mark.parametrize("status", ["pending", "running", "completed", "done", "", "SUCCEEDED"])
async def test_finish_run_rejects_unknown_status(store, status):
    """finish_run with a non-terminal or unknown status raises InvalidArgument, no change."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    before = await run_of(store, run)
    with pytest.raises(InvalidArgument):
        await store.finish_run(run_id=run.id, status=status)
    assert await run_of(store, run) == before, f"finish_run(status={status!r}) changed the run"


# --- RUN-5 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-5")
async def test_request_stop_flags_without_ending(store):
    """request_stop marks an active run stop-requested; it stays active until finished."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert await store.request_stop(run_id=run.id) is True
    stopping = await run_of(store, run)
    assert stopping.stop_requested is True
    assert stopping.status in ACTIVE_RUN_STATUSES, (
        f"request_stop ended the run (status {stopping.status!r})"
    )
    assert await store.finish_run(run_id=run.id, status="aborted") is True
    assert (await run_of(store, run)).status == "aborted"


@pytest.mark.requirement("RUN-5")
@pytest.mark.parametrize("status", TERMINAL_RUN_STATUSES)
async def test_request_stop_on_terminal_run_returns_false(store, status):
    """request_stop on a finished run returns False and changes nothing."""
    ws, chat = await new_chat(store)
    run = await store.begin_run(chat_id=chat, workspace_id=ws)
    assert await store.finish_run(run_id=run.id, status=status)
    finished = await run_of(store, run)
    stopped = await store.request_stop(run_id=run.id)
    assert stopped is False, f"request_stop on a {status!r} run returned {stopped!r}"
    assert await run_of(store, run) == finished


@pytest.mark.requirement("RUN-5")
async def test_disconnect_does_not_end_the_run(adapter, turn_dsn, store):
    """A replica that begins a run and disconnects leaves the run active and not stop-requested."""
    ws, chat = await new_chat(store)
    writer = await adapter.connect(turn_dsn)
    try:
        run = await writer.begin_run(chat_id=chat, workspace_id=ws)
    finally:
        await writer.aclose()
    after = await run_of(store, run)
    assert after.status in ACTIVE_RUN_STATUSES, f"the disconnect ended the run: {after.status!r}"
    assert after.stop_requested is False, "the disconnect requested a stop"
    # Anyone may still finish it.
    assert await store.finish_run(run_id=run.id, status="failed") is True


# --- RUN-6 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-6")
@pytest.mark.capability("turns")
async def test_latest_run_carries_link_and_step_count(store):
    """latest_run shows the linked assistant message and the number of recorded steps."""
    turn = await streaming_turn(store)
    run = await store.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    assert await store.link_assistant(run_id=run.id, message_id=turn.assistant_message_id)
    for _ in range(3):
        assert await store.record_step(run_id=run.id) is True
    current = await run_of(store, run)
    assert (current.assistant_message_id, current.step_count) == (turn.assistant_message_id, 3)
    assert current.status in ACTIVE_RUN_STATUSES
    assert await store.finish_run(run_id=run.id, status="succeeded")
    finished = await run_of(store, run)
    assert (finished.status, finished.assistant_message_id, finished.step_count) == (
        "succeeded",
        turn.assistant_message_id,
        3,
    )


@pytest.mark.requirement("RUN-6")
@pytest.mark.capability("turns")
async def test_latest_run_is_the_newest(store):
    """Of several runs of a chat, latest_run returns the newest, with its own link and steps."""
    ws, chat = await new_chat(store)
    expected = []
    for index, status in enumerate(("succeeded", "failed", None)):
        turn = await streaming_turn(store, workspace_id=ws, chat_id=chat)
        run = await store.begin_run(chat_id=chat, workspace_id=ws)
        assert await store.link_assistant(run_id=run.id, message_id=turn.assistant_message_id)
        for _ in range(index + 1):
            assert await store.record_step(run_id=run.id)
        expected.append((run.id, turn.assistant_message_id, index + 1))
        current = await latest(store, ws, chat)
        assert (current.id, current.assistant_message_id, current.step_count) == expected[-1]
        if status is not None:
            assert await store.finish_run(run_id=run.id, status=status)
    current = await latest(store, ws, chat)
    assert (current.id, current.assistant_message_id, current.step_count) == expected[-1], (
        "latest_run did not return the newest run"
    )


@pytest.mark.requirement("RUN-6")
async def test_latest_run_order_follows_database_clock(open_store):
    """A run begun later is the latest even when its replica's clock runs far behind."""
    ahead = await open_store(clock=skewed_clock(SKEW), name="replica-ahead")
    behind = await open_store(clock=skewed_clock(-SKEW), name="replica-behind")
    ws, chat = await new_chat(ahead)
    first = await ahead.begin_run(chat_id=chat, workspace_id=ws)
    assert await ahead.finish_run(run_id=first.id, status="succeeded")
    second = await behind.begin_run(chat_id=chat, workspace_id=ws)
    for replica in (ahead, behind):
        current = await latest(replica, ws, chat)
        assert current.id == second.id, (
            "latest_run returned the older run begun by the replica whose clock runs ahead"
        )


@pytest.mark.requirement("RUN-6")
async def test_latest_run_of_chat_without_runs_is_none(store):
    """latest_run of a chat that never had a run returns None."""
    ws, chat = await new_chat(store)
    assert await store.latest_run(chat_id=chat, workspace_id=ws) is None


# --- RUN-7 ---------------------------------------------------------------------------------


@pytest.mark.requirement("RUN-7")
async def test_sweep_runs_aborts_stale_active_runs_only(store, db_clock):
    """sweep_runs aborts the stale active runs of every workspace, counts them, spares the rest."""
    ws_a, chat_a = await new_chat(store)
    ws_b, chat_b = await new_chat(store)
    _, chat_done = await new_chat(store, ws_a)
    _, chat_fresh = await new_chat(store, ws_b)
    stale = [
        await store.begin_run(chat_id=chat_a, workspace_id=ws_a),
        await store.begin_run(chat_id=chat_b, workspace_id=ws_b),
    ]
    done = await store.begin_run(chat_id=chat_done, workspace_id=ws_a)
    assert await store.finish_run(run_id=done.id, status="succeeded")
    done_before = await run_of(store, done)
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        fresh = await store.begin_run(chat_id=chat_fresh, workspace_id=ws_b)
        fresh_before = await run_of(store, fresh)
        swept = await store.sweep_runs(older_than=STALE)

    assert await run_of(store, fresh) == fresh_before, "sweep_runs touched a fresh active run"
    assert await run_of(store, done) == done_before, "sweep_runs touched a finished run"
    for run in stale:
        after = await run_of(store, run)
        assert after.status == "aborted", f"a stale active run was left {after.status!r}"
    assert swept == 2, f"sweep_runs returned {swept}, expected the 2 stale active runs"
    # The swept runs no longer block their chats.
    restarted = await store.begin_run(chat_id=chat_a, workspace_id=ws_a)
    assert restarted.status in ACTIVE_RUN_STATUSES


@pytest.mark.requirement("RUN-7")
async def test_record_step_keeps_a_run_fresh(store, db_clock):
    """record_step on a run that had gone stale refreshes it, so the sweep leaves it active."""
    ws, chat_kept = await new_chat(store)
    _, chat_idle = await new_chat(store, ws)
    kept = await store.begin_run(chat_id=chat_kept, workspace_id=ws)
    idle = await store.begin_run(chat_id=chat_idle, workspace_id=ws)
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        stepped = await store.record_step(run_id=kept.id)
        swept = await store.sweep_runs(older_than=STALE)

    assert stepped is True
    after = await run_of(store, kept)
    assert after.status in ACTIVE_RUN_STATUSES, (
        f"the sweep aborted a run record_step had just refreshed (status {after.status!r})"
    )
    assert after.step_count == 1
    assert (await run_of(store, idle)).status == "aborted", "set-up: the idle run was not swept"
    assert swept == 1


@pytest.mark.requirement("RUN-7")
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
    ws, chat_stale = await new_chat(writer)
    _, chat_stepped = await new_chat(writer, ws)
    _, chat_fresh = await new_chat(writer, ws)
    stale = await writer.begin_run(chat_id=chat_stale, workspace_id=ws)
    stepped = await writer.begin_run(chat_id=chat_stepped, workspace_id=ws)
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        fresh = await writer.begin_run(chat_id=chat_fresh, workspace_id=ws)
        assert await writer.record_step(run_id=stepped.id)
        swept = await sweeper.sweep_runs(older_than=STALE)

    for run in (fresh, stepped):
        status = (await run_of(writer, run)).status
        assert status in ACTIVE_RUN_STATUSES, (
            f"a fresh run was swept ({status!r}): staleness was not judged by the database clock"
        )
    assert (await run_of(writer, stale)).status == "aborted", (
        "a stale run was spared: staleness was not judged by the database clock"
    )
    assert swept == 1
