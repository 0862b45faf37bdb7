"""The streaming sweep: stale rows aborted, nothing else touched (SWP-1 .. SWP-5).

Rows that must be stale are written before `db_clock.let_pass(STALE)`; rows that
must be fresh are written, and the sweep run, inside `db_clock.within(STALE)`,
so the database clock itself proves which is which. Verdicts come after the
block, once the premise is proved.
"""

from __future__ import annotations

import pytest

from harness import Message, TurnStore

from .support import (
    SKEW,
    STALE,
    Turn,
    new_workspace,
    skewed_clock,
    streaming_turn,
    text_parts,
)

pytestmark = pytest.mark.anyio


async def row(store: TurnStore, turn: Turn) -> Message:
    message = await store.get_message(
        message_id=turn.assistant_message_id, workspace_id=turn.workspace_id
    )
    assert message is not None, f"assistant message {turn.assistant_message_id!r} vanished"
    return message


async def user_row(store: TurnStore, turn: Turn) -> Message:
    message = await store.get_message(
        message_id=turn.user_message_id, workspace_id=turn.workspace_id
    )
    assert message is not None, f"user message {turn.user_message_id!r} vanished"
    return message


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
    )
    return turn


@pytest.mark.requirement("SWP-1")
@pytest.mark.capability("streaming")
async def test_sweep_aborts_stale_streaming_rows_in_every_workspace(store, db_clock):
    """sweep_streaming aborts every stale streaming row, whatever its workspace, and counts them."""
    ws_a, ws_b = new_workspace(), new_workspace()
    a_1 = await streaming_turn(store, workspace_id=ws_a)
    a_2 = await streaming_turn(store, workspace_id=ws_a, chat_id=a_1.chat_id)
    b_1 = await streaming_turn(store, workspace_id=ws_b)
    assert await step(store, a_2, "finished step")
    stale = [a_1, a_2, b_1]
    before = {t.assistant_message_id: await row(store, t) for t in stale}
    users_before = [await user_row(store, t) for t in stale]
    await db_clock.let_pass(STALE)

    swept = await store.sweep_streaming(older_than=STALE)

    assert swept == 3, f"sweep_streaming returned {swept}, expected the 3 stale streaming rows"
    for turn in stale:
        after = await row(store, turn)
        old = before[turn.assistant_message_id]
        assert after.status == "aborted", f"stale row in {turn.workspace_id} left {after.status!r}"
        assert (after.content, after.parts) == (old.content, old.parts), (
            "the sweep changed the finished steps of the row it aborted"
        )
    assert [await user_row(store, t) for t in stale] == users_before, "the sweep touched user rows"


@pytest.mark.requirement("SWP-2")
@pytest.mark.capability("streaming")
async def test_sweep_leaves_fresh_streaming_rows(store, db_clock):
    """A streaming row updated within the threshold (another replica's live turn) is not swept."""
    stale = await streaming_turn(store)
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        fresh_shell = await streaming_turn(store)
        fresh_stepped = await streaming_turn(store, workspace_id=stale.workspace_id)
        assert await step(store, fresh_stepped, "live step")
        fresh_before = [await row(store, fresh_shell), await row(store, fresh_stepped)]
        swept = await store.sweep_streaming(older_than=STALE)

    fresh_after = [await row(store, fresh_shell), await row(store, fresh_stepped)]
    assert fresh_after == fresh_before, "the sweep touched a fresh streaming row"
    assert (await row(store, stale)).status == "aborted", "set-up: the stale row was not swept"
    assert swept == 1, f"sweep_streaming returned {swept}; only the one stale row was due"


@pytest.mark.requirement("SWP-2")
@pytest.mark.capability("streaming")
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
    assert before[legacy_id].status is None, "set-up: insert_legacy_message wrote a status"
    await db_clock.let_pass(STALE)

    swept = await store.sweep_streaming(older_than=STALE)

    after = {m.id: m for m in await store.list_messages(chat_id=chat, workspace_id=ws)}
    for message_id in untouchable:
        assert after[message_id] == before[message_id], (
            f"the sweep changed a {before[message_id].status or 'legacy NULL-status'} row"
        )
    assert after[dangling.assistant_message_id].status == "aborted"
    assert swept == 1, f"sweep_streaming returned {swept}; only the one streaming row was due"


@pytest.mark.requirement("SWP-3")
async def test_second_sweep_changes_nothing(store, db_clock):
    """A sweep right after a sweep returns 0 and leaves every row as the first one left it."""
    first = await streaming_turn(store)
    second = await streaming_turn(store)
    await db_clock.let_pass(STALE)
    assert await store.sweep_streaming(older_than=STALE) == 2
    after_first = [await row(store, first), await row(store, second)]
    assert [m.status for m in after_first] == ["aborted", "aborted"]

    again = await store.sweep_streaming(older_than=STALE)

    assert again == 0, f"the second sweep returned {again}, not 0"
    assert [await row(store, first), await row(store, second)] == after_first, (
        "the second sweep rewrote rows the first had already aborted"
    )


@pytest.mark.requirement("SWP-4")
@pytest.mark.capability("streaming")
async def test_step_after_sweep_is_rejected(store, db_clock):
    """Sweep first, then the late step: the row stays aborted and never carries the step."""
    turn = await streaming_turn(store)
    assert await step(store, turn, "step one")
    await db_clock.let_pass(STALE)
    assert await store.sweep_streaming(older_than=STALE) == 1
    swept = await row(store, turn)
    assert swept.status == "aborted"

    late = await step(store, turn, "late step")

    assert late is False, f"append_step on a swept row returned {late!r}, not False"
    assert await row(store, turn) == swept, "the late step changed the aborted row"


@pytest.mark.requirement("SWP-4")
@pytest.mark.capability("streaming")
async def test_sweep_after_step_spares_the_row(store, db_clock):
    """A step on a row that had gone stale refreshes it: the following sweep leaves it streaming."""
    turn = await streaming_turn(store)
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        stepped = await step(store, turn, "late step")
        swept = await store.sweep_streaming(older_than=STALE)

    assert stepped is True
    after = await row(store, turn)
    assert (after.status, after.content, after.parts) == (
        "streaming",
        "late step",
        text_parts("late step"),
    ), "the sweep aborted a row whose step had just refreshed it"
    assert swept == 0


@pytest.mark.requirement("SWP-5")
@pytest.mark.capability("streaming")
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
    stale = [await streaming_turn(writer), await streaming_turn(writer)]
    assert await step(writer, stale[1], "old step")
    await db_clock.let_pass(STALE)
    async with db_clock.within(STALE):
        fresh = [await streaming_turn(writer), await streaming_turn(writer)]
        assert await step(writer, fresh[1], "live step")
        fresh_before = [await row(writer, t) for t in fresh]
        swept = await sweeper.sweep_streaming(older_than=STALE)

    assert [await row(writer, t) for t in fresh] == fresh_before, (
        "a fresh row was swept: staleness was not judged by the database clock"
    )
    assert [(await row(writer, t)).status for t in stale] == ["aborted", "aborted"], (
        "a stale row was spared: staleness was not judged by the database clock"
    )
    assert swept == 2
