"""The streaming sweep: stale rows aborted, nothing else touched (SWP-1 .. SWP-5).

A scenario with stale rows only writes them, lets the tiny STALE_ONLY pass on the
database clock and sweeps with it. One with fresh rows too writes the stale ones, lets a
short gap pass on the database clock (`SweepPremise.pass_gap`), writes the fresh ones and
sweeps with a threshold chosen inside the gap as the sweep is called, so the database
clock itself says which row is which; `sweep_premise` proves that the sweep ended within
the gap (else tries again with a wider one). Verdicts come after, once the premise held.
The constants are in scenarios/support.py.
"""

from __future__ import annotations

import pytest

from harness import TurnStore

from .support import (
    SKEW,
    STALE_ONLY,
    SweepPremise,
    Turn,
    assistant_row,
    describe_message,
    new_workspace,
    skewed_clock,
    streaming_turn,
    sweep_premise,
    text_parts,
    user_row,
)

# Every scenario here reads statuses ('streaming', 'aborted'): those are `streaming`'s.
pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns", "streaming")]


async def step(store: TurnStore, turn: Turn, text: str) -> bool:
    return await store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content=text,
        parts=text_parts(text),
    )


async def finalized_turn(store: TurnStore, status: str, **where) -> Turn:
    turn = await streaming_turn(store, **where)
    assert await store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        status=status,
        content=f"{status} answer",
        parts=text_parts(f"{status} answer"),
        usage=None,
    ), f"set-up: finalize to {status!r} of a streaming row returned False; expected True"
    return turn


async def stepped(store: TurnStore, turn: Turn, text: str) -> None:
    """Set-up: a step on a live streaming row, which must apply."""
    assert await step(store, turn, text), (
        f"set-up: append_step({text!r}) on the streaming row {turn.assistant_message_id!r} "
        "returned False; expected True"
    )


@pytest.mark.requirement("SWP-1a", "SWP-1b")
async def test_sweep_aborts_stale_streaming_rows_in_every_workspace(store, db_clock):
    """sweep_streaming aborts every stale streaming row, whatever its workspace, and counts them."""
    ws_a, ws_b = new_workspace(), new_workspace()
    a_1 = await streaming_turn(store, workspace_id=ws_a)
    a_2 = await streaming_turn(store, workspace_id=ws_a, chat_id=a_1.chat_id)
    b_1 = await streaming_turn(store, workspace_id=ws_b)
    await stepped(store, a_2, "finished step")
    stale = [a_1, a_2, b_1]
    before = {t.assistant_message_id: await assistant_row(store, t) for t in stale}
    users_before = [await user_row(store, t) for t in stale]
    await db_clock.let_pass(STALE_ONLY)

    swept = await store.sweep_streaming(older_than=STALE_ONLY)

    assert swept == 3, f"expected sweep_streaming to return 3 (the stale rows), got {swept}"
    for turn in stale:
        after = await assistant_row(store, turn)
        old = before[turn.assistant_message_id]
        assert after.status == "aborted", (
            f"expected the stale row in workspace {turn.workspace_id!r} to be 'aborted', found "
            f"{after.status!r}"
        )
        assert (after.content, after.parts) == (old.content, old.parts), (
            f"expected the sweep to keep the aborted row's finished steps, "
            f"{describe_message(old)}; found {describe_message(after)}"
        )
    users_after = [await user_row(store, t) for t in stale]
    assert users_after == users_before, (
        f"expected the sweep to leave user rows alone, but they went from "
        f"{[describe_message(m) for m in users_before]} to "
        f"{[describe_message(m) for m in users_after]}"
    )


@pytest.mark.requirement("SWP-2a", "SWP-1a", "SWP-1b")
async def test_sweep_leaves_fresh_streaming_rows(store, db_clock):
    """A streaming row updated within the threshold (another replica's live turn) is not swept."""

    async def attempt(premise: SweepPremise):
        stale = await streaming_turn(store)
        await premise.pass_gap()
        fresh_shell = await streaming_turn(store)
        fresh_stepped = await streaming_turn(store, workspace_id=stale.workspace_id)
        await stepped(store, fresh_stepped, "live step")
        fresh_before = [
            await assistant_row(store, fresh_shell),
            await assistant_row(store, fresh_stepped),
        ]
        swept = await premise.sweep(store.sweep_streaming)
        return stale, fresh_shell, fresh_stepped, fresh_before, swept

    stale, fresh_shell, fresh_stepped, fresh_before, swept = await sweep_premise(
        db_clock, attempt, settle=[store.sweep_streaming]
    )

    fresh_after = [
        await assistant_row(store, fresh_shell),
        await assistant_row(store, fresh_stepped),
    ]
    assert fresh_after == fresh_before, (
        f"expected the sweep to leave fresh streaming rows alone, but they went from "
        f"{[describe_message(m) for m in fresh_before]} to "
        f"{[describe_message(m) for m in fresh_after]}"
    )
    stale_after = await assistant_row(store, stale)
    assert stale_after.status == "aborted", (
        f"expected the stale row to be swept to 'aborted', found {stale_after.status!r}"
    )
    assert swept == 1, f"expected sweep_streaming to return 1 (the one stale row), got {swept}"


@pytest.mark.requirement("SWP-2b", "SWP-2c", "SWP-1b")
async def test_sweep_never_touches_terminal_or_legacy_rows(store, db_clock):
    """Stale completed, error, aborted and legacy NULL-status rows are left exactly as they were."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    where = {"workspace_id": ws, "chat_id": chat}
    finished = [await finalized_turn(store, s, **where) for s in ("completed", "error", "aborted")]
    legacy_id = await store.insert_legacy_message(chat_id=chat, workspace_id=ws, content="legacy")
    dangling = await streaming_turn(store, **where)
    untouchable = [t.assistant_message_id for t in finished] + [legacy_id]
    before = {m.id: m for m in await store.list_messages(chat_id=chat, workspace_id=ws)}
    assert before[legacy_id].status is None, (
        f"set-up: expected insert_legacy_message to write status NULL, found "
        f"{before[legacy_id].status!r}"
    )
    await db_clock.let_pass(STALE_ONLY)

    swept = await store.sweep_streaming(older_than=STALE_ONLY)

    after = {m.id: m for m in await store.list_messages(chat_id=chat, workspace_id=ws)}
    for message_id in untouchable:
        assert after[message_id] == before[message_id], (
            f"expected the sweep to leave a {before[message_id].status or 'legacy NULL-status'} "
            f"row alone, but it went from {describe_message(before[message_id])} to "
            f"{describe_message(after[message_id])}"
        )
    dangling_status = after[dangling.assistant_message_id].status
    assert dangling_status == "aborted", (
        f"expected the stale streaming row to be swept to 'aborted', found {dangling_status!r}"
    )
    assert swept == 1, f"expected sweep_streaming to return 1 (the streaming row), got {swept}"


@pytest.mark.requirement("SWP-3a", "SWP-1b")
async def test_second_sweep_changes_nothing(store, db_clock):
    """A sweep right after a sweep returns 0 and leaves every row as the first one left it."""
    first = await streaming_turn(store)
    second = await streaming_turn(store)
    await db_clock.let_pass(STALE_ONLY)
    swept = await store.sweep_streaming(older_than=STALE_ONLY)
    after_first = [await assistant_row(store, first), await assistant_row(store, second)]
    assert (swept, [m.status for m in after_first]) == (2, ["aborted", "aborted"]), (
        f"set-up: expected the first sweep to abort both stale rows (2), found it returned "
        f"{swept} and the rows are {[m.status for m in after_first]}"
    )

    again = await store.sweep_streaming(older_than=STALE_ONLY)

    assert again == 0, f"expected the second sweep to return 0, got {again}"
    after_second = [await assistant_row(store, first), await assistant_row(store, second)]
    assert after_second == after_first, (
        f"expected the second sweep to leave the aborted rows alone, but they went from "
        f"{[describe_message(m) for m in after_first]} to "
        f"{[describe_message(m) for m in after_second]}"
    )


@pytest.mark.requirement("SWP-4a")
async def test_step_after_sweep_is_rejected(store, db_clock):
    """Sweep first, then the late step: the row stays aborted and never carries the step."""
    turn = await streaming_turn(store)
    await stepped(store, turn, "step one")
    await db_clock.let_pass(STALE_ONLY)
    count = await store.sweep_streaming(older_than=STALE_ONLY)
    swept = await assistant_row(store, turn)
    assert (count, swept.status) == (1, "aborted"), (
        f"set-up: expected the sweep to abort the stale row (1), found it returned {count} and "
        f"the row is {swept.status!r}"
    )

    late = await step(store, turn, "late step")

    assert late is False, f"expected append_step on a swept row to return False, got {late!r}"
    after = await assistant_row(store, turn)
    assert after == swept, (
        f"expected the late step to leave the aborted row as it was, {describe_message(swept)}; "
        f"found {describe_message(after)}"
    )


@pytest.mark.requirement("SWP-4b")
async def test_sweep_after_step_spares_the_row(store, db_clock):
    """A step on a row that had gone stale refreshes it: the following sweep leaves it streaming."""

    async def attempt(premise: SweepPremise):
        turn = await streaming_turn(store)
        await premise.pass_gap()
        applied = await step(store, turn, "late step")
        return turn, applied, await premise.sweep(store.sweep_streaming)

    turn, applied, swept = await sweep_premise(db_clock, attempt, settle=[store.sweep_streaming])

    assert applied is True, (
        f"expected append_step on a stale but still streaming row to return True, got {applied!r}"
    )
    after = await assistant_row(store, turn)
    assert (after.status, after.content, after.parts) == (
        "streaming",
        "late step",
        text_parts("late step"),
    ), (
        "expected the step to refresh the row so the sweep spares it ('streaming', 'late step'), "
        f"found {describe_message(after)}"
    )
    assert swept == 0, f"expected the sweep to return 0 (nothing stale), got {swept}"


@pytest.mark.requirement("SWP-5a", "SWP-5b", "SWP-1b")
@pytest.mark.parametrize(
    ("writer_offset", "sweeper_offset"),
    [(SKEW, -SKEW), (-SKEW, SKEW)],
    ids=["writer-ahead-sweeper-behind", "writer-behind-sweeper-ahead"],
)
async def test_staleness_is_judged_by_database_clock(
    open_store, db_clock, writer_offset, sweeper_offset
):
    """Replicas whose clocks are minutes off neither sweep fresh rows nor spare stale ones."""
    writer = await open_store(clock=skewed_clock(writer_offset), name="writer")
    sweeper = await open_store(clock=skewed_clock(sweeper_offset), name="sweeper")

    async def attempt(premise: SweepPremise):
        stale = [await streaming_turn(writer), await streaming_turn(writer)]
        await stepped(writer, stale[1], "old step")
        await premise.pass_gap()
        fresh = [await streaming_turn(writer), await streaming_turn(writer)]
        await stepped(writer, fresh[1], "live step")
        fresh_before = [await assistant_row(writer, t) for t in fresh]
        return stale, fresh, fresh_before, await premise.sweep(sweeper.sweep_streaming)

    stale, fresh, fresh_before, swept = await sweep_premise(
        db_clock, attempt, settle=[sweeper.sweep_streaming]
    )

    fresh_after = [await assistant_row(writer, t) for t in fresh]
    assert fresh_after == fresh_before, (
        "expected fresh rows left alone, but a fresh row was swept (staleness was not judged by "
        f"the database clock): {[describe_message(m) for m in fresh_after]}"
    )
    stale_statuses = [(await assistant_row(writer, t)).status for t in stale]
    assert stale_statuses == ["aborted", "aborted"], (
        "expected both stale rows 'aborted', found a stale row spared (staleness was not judged "
        f"by the database clock): statuses {stale_statuses}"
    )
    assert swept == 2, f"expected sweep_streaming to return 2 (the stale rows), got {swept}"
