"""Messages: idempotent turns, the streaming guard, finalize, timestamps (MSG-1 .. MSG-9).

The sequential forms; the concurrent forms run under the race engine.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from harness import InvalidArgument, TurnStore

from .support import (
    NO_TEXT_PART,
    SKEW,
    STALE_ONLY,
    TERMINAL_MESSAGE_STATUSES,
    USAGE_A,
    assistant_row,
    describe_message,
    existing_message,
    is_empty_parts,
    missing_id_like,
    new_turn_id,
    new_workspace,
    raised_by,
    skewed_clock,
    streaming_turn,
    text_parts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]

PERSIST_OPS = ("persist_user_turn", "persist_assistant_shell")
FINAL_PARTS = [
    {"type": "text", "text": "final answer"},
    {"type": "tool-call", "toolCallId": "call-1", "toolName": "ls", "args": {"path": "/"}},
]


async def persist(store: TurnStore, op: str, *, chat_id: str, workspace_id: str, turn_id):
    """Call one of the two persist operations by name (the user turn gets a fixed text)."""
    if op == "persist_user_turn":
        return await store.persist_user_turn(
            chat_id=chat_id, workspace_id=workspace_id, turn_id=turn_id, text="hello"
        )
    return await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=workspace_id, turn_id=turn_id
    )


def assert_database_time(value: datetime, before: datetime, after: datetime, what: str) -> None:
    assert before <= value <= after, (
        f"{what} set updated_at={value.isoformat()}, outside the database clock's window "
        f"[{before.isoformat()}, {after.isoformat()}] around the call "
        f"(off by about {(value - before).total_seconds():+.1f} s): not the database clock"
    )


# --- MSG-1 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-1a", "MSG-1b", "MSG-1c", "MSG-1d")
async def test_repeated_user_turn_returns_same_id_and_keeps_first_text(store):
    """Repeating persist_user_turn with one turn id returns one id, one row, the first text."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    turn = new_turn_id()
    ids = [
        await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn, text=text)
        for text in ("first text", "second text", "third text")
    ]
    assert ids[0] is not None, "persist_user_turn of a new turn returned None, not its row's id"
    assert ids == [ids[0]] * 3, (
        f"expected the three calls with one turn id to return one id, got {ids}"
    )
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    assert [m.id for m in rows] == [ids[0]], (
        f"expected exactly the one row {ids[0]!r} in the chat, found {[m.id for m in rows]}"
    )
    (row,) = rows
    assert (row.role, row.turn_id, row.chat_id, row.workspace_id) == ("user", turn, chat, ws), (
        f"expected a user row of turn {turn!r} in chat {chat!r} of workspace {ws!r}, found "
        f"role {row.role!r}, turn {row.turn_id!r}, chat {row.chat_id!r}, workspace "
        f"{row.workspace_id!r}"
    )
    assert row.content == "first text", (
        f"expected the first text to win, found content {row.content!r}"
    )
    stored = json.dumps([row.content, row.parts])
    for later in ("second text", "third text"):
        assert later not in stored, f"a repeated call's {later!r} reached the row: {stored}"


@pytest.mark.requirement("MSG-1a", "MSG-1b", "MSG-1d")
async def test_repeated_user_turn_from_another_replica_returns_same_id(store, open_store):
    """A retry of persist_user_turn through another replica finds the same row."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    turn = new_turn_id()
    other = await open_store(name="replica-b")
    first = await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn, text="a")
    second = await other.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn, text="b")
    assert first is not None, "persist_user_turn of a new turn returned None, not its row's id"
    assert second == first, (
        f"expected the retry through another replica to return {first!r}, got {second!r}"
    )
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    found = [(m.id, m.content) for m in rows]
    assert found == [(first, "a")], (
        f"expected the one row {first!r} with the first text 'a', found (id, content) {found}"
    )


@pytest.mark.requirement("MSG-1e")
async def test_user_turn_idempotency_is_per_chat_and_turn(store):
    """The same turn id in another chat, or another turn id, makes a row of its own."""
    ws = new_workspace()
    chat_1 = await store.create_chat(workspace_id=ws)
    chat_2 = await store.create_chat(workspace_id=ws)
    turn, other_turn = new_turn_id(), new_turn_id()
    in_1 = await store.persist_user_turn(chat_id=chat_1, workspace_id=ws, turn_id=turn, text="1")
    in_2 = await store.persist_user_turn(chat_id=chat_2, workspace_id=ws, turn_id=turn, text="2")
    later = await store.persist_user_turn(
        chat_id=chat_1, workspace_id=ws, turn_id=other_turn, text="3"
    )
    assert None not in (in_1, in_2, later), (
        f"persist_user_turn of a new turn returned None: ids {in_1!r}, {in_2!r}, {later!r}"
    )
    assert len({in_1, in_2, later}) == 3, (
        f"expected three distinct rows, but distinct turns shared an id: {in_1}, {in_2}, {later}"
    )
    found_1 = [
        (m.id, m.content) for m in await store.list_messages(chat_id=chat_1, workspace_id=ws)
    ]
    found_2 = [
        (m.id, m.content) for m in await store.list_messages(chat_id=chat_2, workspace_id=ws)
    ]
    assert found_1 == [(in_1, "1"), (later, "3")], (
        f"expected chat 1 to hold {[(in_1, '1'), (later, '3')]}, found {found_1}"
    )
    assert found_2 == [(in_2, "2")], f"expected chat 2 to hold {[(in_2, '2')]}, found {found_2}"


# --- MSG-2 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-2a", "MSG-2b")
@pytest.mark.parametrize("turn_id", ["", None], ids=["empty", "missing"])
@pytest.mark.parametrize("op", PERSIST_OPS)
async def test_no_turn_id_returns_none_and_writes_nothing(store, op, turn_id):
    """A persist with an empty or missing turn id returns None and writes no row."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    for _ in range(2):
        result = await persist(store, op, chat_id=chat, workspace_id=ws, turn_id=turn_id)
        assert result is None, f"{op}(turn_id={turn_id!r}) returned {result!r}, not None"
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    assert rows == [], f"{op}(turn_id={turn_id!r}) wrote rows: {rows}"


# --- MSG-3 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-3a")
async def test_assistant_shell_is_an_empty_assistant_row(store):
    """persist_assistant_shell makes an assistant row of the turn with no text yet."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    turn = new_turn_id()
    shell = await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn)
    assert shell is not None, "persist_assistant_shell of a new turn returned None, not an id"
    row = await existing_message(store, shell, ws, "assistant shell")
    assert (row.role, row.turn_id, row.chat_id, row.workspace_id) == (
        "assistant",
        turn,
        chat,
        ws,
    ), (
        f"expected an assistant row of turn {turn!r} in chat {chat!r} of workspace {ws!r}, "
        f"found role {row.role!r}, turn {row.turn_id!r}, chat {row.chat_id!r}, workspace "
        f"{row.workspace_id!r}"
    )
    assert row.content == "", f"expected a fresh shell's content to be empty, found {row.content!r}"
    assert is_empty_parts(row.parts), f"a fresh shell must carry no text, got parts {row.parts}"


@pytest.mark.requirement("MSG-3b")
@pytest.mark.capability("streaming")
async def test_assistant_shell_is_streaming(store):
    """A fresh assistant shell has status 'streaming'."""
    turn = await streaming_turn(store)
    row = await assistant_row(store, turn)
    assert row.status == "streaming", (
        f"expected a fresh assistant shell to be 'streaming', found status {row.status!r}"
    )


@pytest.mark.requirement("MSG-3c")
async def test_repeated_assistant_shell_returns_same_id_and_one_row(store, open_store):
    """Repeating persist_assistant_shell (also via another replica) gives one id and one row."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    turn = new_turn_id()
    other = await open_store(name="replica-b")
    ids = [
        await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn),
        await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn),
        await other.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn),
    ]
    assert ids[0] is not None, "persist_assistant_shell of a new turn returned None, not an id"
    assert ids == [ids[0]] * 3, (
        f"expected the three calls with one turn id to return one id, got {ids}"
    )
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    found = [(m.id, m.role) for m in rows]
    assert found == [(ids[0], "assistant")], (
        f"expected the one assistant row {ids[0]!r}, found (id, role) {found}"
    )


@pytest.mark.requirement("MSG-1a", "MSG-1e", "MSG-3c")
async def test_user_and_assistant_rows_of_one_turn_are_distinct(store):
    """One turn id keys one user row and one assistant row, in either order, each idempotent."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    turn_1, turn_2 = new_turn_id(), new_turn_id()
    user_1 = await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn_1, text="q1")
    shell_1 = await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn_1)
    # The second turn persists its shell first.
    shell_2 = await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn_2)
    user_2 = await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn_2, text="q2")
    ids = [user_1, shell_1, shell_2, user_2]
    assert None not in ids, f"a persist of a new turn returned None: ids {ids}"
    assert len(set(ids)) == 4, f"expected four distinct rows, but rows shared an id: {ids}"
    again = [
        await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn_1, text="x"),
        await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn_1),
        await store.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn_2),
        await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn_2, text="y"),
    ]
    assert again == ids, f"expected the repeated persists to return {ids}, got {again}"
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    expected = [
        (user_1, "user", turn_1),
        (shell_1, "assistant", turn_1),
        (shell_2, "assistant", turn_2),
        (user_2, "user", turn_2),
    ]
    found = [(m.id, m.role, m.turn_id) for m in rows]
    assert found == expected, f"expected the four rows oldest first, {expected}, found {found}"


# --- MSG-4 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-4a")
async def test_append_step_applies_while_streaming(store):
    """append_step on a streaming row returns True and stores the step's content and parts."""
    turn = await streaming_turn(store)
    parts = [*text_parts("partial"), {"type": "tool-call", "toolCallId": "c1", "toolName": "ls"}]
    applied = await store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content="partial",
        parts=parts,
    )
    assert applied is True, (
        f"expected append_step on a streaming row to return True, got {applied!r}"
    )
    row = await assistant_row(store, turn)
    assert (row.status, row.content, row.parts) == ("streaming", "partial", parts), (
        f"expected the step stored on a streaming row ('partial', parts {parts}), found "
        f"{describe_message(row)}, parts {row.parts}"
    )


@pytest.mark.requirement("MSG-4b")
@pytest.mark.parametrize("status", TERMINAL_MESSAGE_STATUSES)
async def test_late_step_after_finalize_changes_nothing(store, status):
    """Once finalized, a late append_step returns False and leaves the row exactly as it was."""
    turn = await streaming_turn(store)
    mid, ws = turn.assistant_message_id, turn.workspace_id
    assert await store.append_step(
        message_id=mid, workspace_id=ws, content="partial", parts=text_parts("partial")
    ), "set-up: append_step on a fresh streaming row returned False; expected True"
    assert await store.finalize(
        message_id=mid,
        workspace_id=ws,
        status=status,
        content="final answer",
        parts=FINAL_PARTS,
        usage=None,
    ), f"set-up: finalize to {status!r} of a streaming row returned False; expected True"
    finalized = await assistant_row(store, turn)
    assert (finalized.status, finalized.content, finalized.parts) == (
        status,
        "final answer",
        FINAL_PARTS,
    ), f"set-up: expected the finalized row ({status!r}), found {describe_message(finalized)}"
    late = await store.append_step(
        message_id=mid, workspace_id=ws, content="late step", parts=text_parts("late step")
    )
    assert late is False, f"append_step on a {status!r} row returned {late!r}, not False"
    after = await assistant_row(store, turn)
    assert after == finalized, (
        f"expected a late append_step to leave the {status!r} row as it was, "
        f"{describe_message(finalized)}; found {describe_message(after)}"
    )


@pytest.mark.requirement("MSG-4b")
async def test_step_on_legacy_row_changes_nothing(store):
    """append_step on a legacy NULL-status row returns False and leaves it as it was."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    legacy = await store.insert_legacy_message(chat_id=chat, workspace_id=ws, content="old answer")
    before = await existing_message(store, legacy, ws, "legacy row")
    assert (before.status, before.content, before.role) == (None, "old answer", "assistant"), (
        "set-up: expected insert_legacy_message to write an assistant row with status NULL and "
        f"content 'old answer', found role {before.role!r}, {describe_message(before)}"
    )
    late = await store.append_step(
        message_id=legacy, workspace_id=ws, content="late step", parts=text_parts("late step")
    )
    assert late is False, f"append_step on a legacy row returned {late!r}, not False"
    after = await existing_message(store, legacy, ws, "legacy row")
    assert after == before, (
        f"expected append_step to leave a legacy NULL-status row as it was, "
        f"{describe_message(before)}; found {describe_message(after)}"
    )


# --- MSG-5 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-5b")
async def test_append_step_moves_updated_at_forward(store):
    """Every append_step on a streaming row moves updated_at strictly forward."""
    turn = await streaming_turn(store)
    previous = (await assistant_row(store, turn)).updated_at
    for step in range(1, 6):
        text = f"step {step}"
        assert await store.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content=text,
            parts=text_parts(text),
        ), f"append_step #{step} on a streaming row returned False; expected True"
        current = (await assistant_row(store, turn)).updated_at
        assert current > previous, (
            f"append_step #{step} left updated_at at {current.isoformat()}, "
            f"not after {previous.isoformat()}"
        )
        previous = current


@pytest.mark.requirement("MSG-5a", "MSG-5b")
@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["replica-ahead", "replica-behind"])
async def test_message_writes_take_updated_at_from_database_clock(open_store, db_clock, offset):
    """persist, append_step and finalize by a replica with a wrong clock stamp database time."""
    replica = await open_store(clock=skewed_clock(offset), name="skewed-replica")
    ws = new_workspace()
    chat = await replica.create_chat(workspace_id=ws)
    turn = new_turn_id()

    before = await db_clock.now()
    user = await replica.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id=turn, text="q")
    after = await db_clock.now()
    assert user is not None, "persist_user_turn of a new turn returned None, not its row's id"
    assert_database_time(
        (await existing_message(replica, user, ws, "user row")).updated_at,
        before,
        after,
        "persist_user_turn",
    )

    before = await db_clock.now()
    shell = await replica.persist_assistant_shell(chat_id=chat, workspace_id=ws, turn_id=turn)
    after = await db_clock.now()
    assert shell is not None, "persist_assistant_shell of a new turn returned None, not an id"
    assert_database_time(
        (await existing_message(replica, shell, ws, "assistant row")).updated_at,
        before,
        after,
        "persist_assistant_shell",
    )

    before = await db_clock.now()
    assert await replica.append_step(
        message_id=shell, workspace_id=ws, content="step", parts=text_parts("step")
    ), "append_step on a fresh streaming row returned False; expected True"
    after = await db_clock.now()
    assert_database_time(
        (await existing_message(replica, shell, ws, "assistant row")).updated_at,
        before,
        after,
        "append_step",
    )

    before = await db_clock.now()
    assert await replica.finalize(
        message_id=shell,
        workspace_id=ws,
        status="completed",
        content="done",
        parts=text_parts("done"),
        usage=None,
    ), "finalize of a streaming row returned False; expected True"
    after = await db_clock.now()
    assert_database_time(
        (await existing_message(replica, shell, ws, "assistant row")).updated_at,
        before,
        after,
        "finalize",
    )


@pytest.mark.requirement("MSG-5a")
@pytest.mark.capability("sweep")
async def test_sweep_takes_updated_at_from_database_clock(store, open_store, db_clock):
    """A sweep by a replica whose clock runs ahead stamps the aborted row with database time."""
    turn = await streaming_turn(store)
    await db_clock.let_pass(STALE_ONLY)
    sweeper = await open_store(clock=skewed_clock(SKEW), name="sweeper-ahead")
    before = await db_clock.now()
    swept = await sweeper.sweep_streaming(older_than=STALE_ONLY)
    after = await db_clock.now()
    row = await assistant_row(store, turn)
    assert (swept, row.status) == (1, "aborted"), (
        f"set-up: expected the one stale row swept (1, 'aborted'), found sweep_streaming "
        f"returned {swept} and the row is {row.status!r}"
    )
    assert_database_time(row.updated_at, before, after, "sweep_streaming")


# --- MSG-6 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-6a")
@pytest.mark.parametrize("status", TERMINAL_MESSAGE_STATUSES)
async def test_finalize_sets_status_content_and_parts(store, status):
    """finalize of a streaming row returns True and stores exactly the given status, text, parts."""
    turn = await streaming_turn(store)
    done = await store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        status=status,
        content="final answer",
        parts=FINAL_PARTS,
        usage=None,
    )
    assert done is True, f"expected finalize of a streaming row to return True, got {done!r}"
    row = await assistant_row(store, turn)
    assert (row.status, row.content, row.parts) == (status, "final answer", FINAL_PARTS), (
        f"expected the finalize stored ({status!r}, 'final answer', parts {FINAL_PARTS}), found "
        f"{describe_message(row)}, parts {row.parts}"
    )


@pytest.mark.requirement("MSG-6a", "MSG-6b")
@pytest.mark.capability("sweep")
async def test_finalize_wins_over_a_sweep(store, db_clock):
    """finalize of a row a sweep already marked aborted sets the finalize's status and text."""
    turn = await streaming_turn(store)
    mid, ws = turn.assistant_message_id, turn.workspace_id
    assert await store.append_step(
        message_id=mid, workspace_id=ws, content="partial", parts=text_parts("partial")
    ), "set-up: append_step on a fresh streaming row returned False; expected True"
    await db_clock.let_pass(STALE_ONLY)
    swept = await store.sweep_streaming(older_than=STALE_ONLY)
    aborted = await assistant_row(store, turn)
    assert (swept, aborted.status) == (1, "aborted"), (
        f"set-up: expected the sweep to abort the one stale row, found it returned {swept} and "
        f"the row is {aborted.status!r}"
    )
    done = await store.finalize(
        message_id=mid,
        workspace_id=ws,
        status="completed",
        content="final answer",
        parts=FINAL_PARTS,
        usage=None,
    )
    assert done is True, f"expected finalize over a swept row to apply (True), got {done!r}"
    row = await assistant_row(store, turn)
    assert (row.status, row.content, row.parts) == ("completed", "final answer", FINAL_PARTS), (
        f"expected the finalize to win over the sweep ('completed', 'final answer'), found "
        f"{describe_message(row)}"
    )


@pytest.mark.requirement("MSG-6c")
async def test_second_finalize_overwrites(store):
    """A second (and third) finalize overwrites status, content and parts again."""
    turn = await streaming_turn(store)
    for status, text in (("completed", "one"), ("error", "two"), ("aborted", "three")):
        done = await store.finalize(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            status=status,
            content=text,
            parts=text_parts(text),
            usage=None,
        )
        assert done is True, f"finalize to {status!r} over a finalized row returned {done!r}"
        row = await assistant_row(store, turn)
        assert (row.status, row.content, row.parts) == (status, text, text_parts(text)), (
            f"expected the later finalize to overwrite the row with ({status!r}, {text!r}), "
            f"found {describe_message(row)}"
        )


@pytest.mark.requirement("MSG-6d")
@pytest.mark.parametrize(
    "status", ["streaming", "pending", "succeeded", "done", "", "COMPLETED", " completed"]
)
async def test_finalize_rejects_unknown_status(store, status):
    """finalize with a status not completed/error/aborted raises InvalidArgument, no write."""
    turn = await streaming_turn(store)
    before = await assistant_row(store, turn)
    await raised_by(
        InvalidArgument,
        store.finalize(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            status=status,
            content="should not land",
            parts=text_parts("should not land"),
            usage=None,
        ),
        f"finalize(status={status!r})",
    )
    after = await assistant_row(store, turn)
    assert after == before, (
        f"expected the rejected finalize(status={status!r}) to write nothing, but the row went "
        f"from {describe_message(before)} to {describe_message(after)}"
    )


@pytest.mark.requirement("MSG-6d")
@pytest.mark.capability("usage")
async def test_finalize_with_unknown_status_writes_no_usage(store):
    """A finalize rejected for its status writes no usage row either."""
    turn = await streaming_turn(store)
    await raised_by(
        InvalidArgument,
        store.finalize(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            status="finished",
            content="x",
            parts=text_parts("x"),
            usage=USAGE_A,
        ),
        "finalize(status='finished') with usage",
    )
    usage = await store.usage_for(message_id=turn.assistant_message_id)
    assert usage == [], f"expected the rejected finalize to write no usage, found {usage}"


# --- MSG-7 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-7a")
@pytest.mark.parametrize("status", TERMINAL_MESSAGE_STATUSES)
async def test_empty_finalize_stores_no_text_marker(store, status):
    """finalize with empty content and no parts stores the single '(no text response)' part."""
    turn = await streaming_turn(store)
    assert await store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        status=status,
        content="",
        parts=[],
        usage=None,
    ), f"finalize to {status!r} of a streaming row returned False; expected True"
    row = await assistant_row(store, turn)
    assert (row.status, row.parts) == (status, [NO_TEXT_PART]), (
        f"expected status {status!r} and the single part {NO_TEXT_PART}, found status "
        f"{row.status!r}, parts {row.parts}"
    )


@pytest.mark.requirement("MSG-7b")
async def test_marker_only_when_there_is_nothing(store):
    """A finalize with text but no parts, or parts but no text, gets no status marker."""
    text_only = await streaming_turn(store)
    assert await store.finalize(
        message_id=text_only.assistant_message_id,
        workspace_id=text_only.workspace_id,
        status="completed",
        content="an answer",
        parts=[],
        usage=None,
    ), "finalize of a streaming row returned False; expected True"
    row = await assistant_row(store, text_only)
    assert row.content == "an answer", f"expected content 'an answer', found {row.content!r}"
    assert NO_TEXT_PART not in row.parts, (
        f"a finalize that had text got the no-text marker: parts {row.parts}"
    )

    tools_only = await streaming_turn(store)
    tool_parts = [{"type": "tool-call", "toolCallId": "c1", "toolName": "ls", "args": {}}]
    assert await store.finalize(
        message_id=tools_only.assistant_message_id,
        workspace_id=tools_only.workspace_id,
        status="completed",
        content="",
        parts=tool_parts,
        usage=None,
    ), "finalize of a streaming row returned False; expected True"
    row = await assistant_row(store, tools_only)
    assert (row.content, row.parts) == ("", tool_parts), (
        f"expected a finalize with parts but no text to keep exactly its parts {tool_parts}, "
        f"found content {row.content!r}, parts {row.parts}"
    )


# --- MSG-8 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-8a")
async def test_finalize_of_missing_message_returns_false(store):
    """finalize of a message id that names nothing returns False and does not raise."""
    turn = await streaming_turn(store)
    before = await store.list_messages(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    missing = missing_id_like(turn.assistant_message_id)
    done = await store.finalize(
        message_id=missing,
        workspace_id=turn.workspace_id,
        status="completed",
        content="x",
        parts=text_parts("x"),
        usage=None,
    )
    assert done is False, f"expected finalize of a missing message to return False, got {done!r}"
    after = await store.list_messages(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    assert after == before, (
        f"expected finalize of a missing message to write nothing, but the chat went from "
        f"{[describe_message(m) for m in before]} to {[describe_message(m) for m in after]}"
    )


@pytest.mark.requirement("MSG-8a", "MSG-8b")
@pytest.mark.capability("usage")
async def test_finalize_of_missing_message_writes_no_usage(store):
    """finalize with usage of a message that does not exist returns False and writes no usage."""
    turn = await streaming_turn(store)
    missing = missing_id_like(turn.assistant_message_id)
    done = await store.finalize(
        message_id=missing,
        workspace_id=turn.workspace_id,
        status="completed",
        content="x",
        parts=text_parts("x"),
        usage=USAGE_A,
    )
    assert done is False, f"expected finalize of a missing message to return False, got {done!r}"
    usage = await store.usage_for(message_id=missing)
    assert usage == [], f"expected no usage for a missing message, found {usage}"


@pytest.mark.requirement("MSG-8a", "MSG-8b", "WS-1b")
@pytest.mark.capability("usage")
async def test_finalize_in_other_workspace_returns_false_and_writes_no_usage(store):
    """finalize of a real message under another workspace id returns False, writes nothing."""
    turn = await streaming_turn(store)
    before = await assistant_row(store, turn)
    done = await store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=new_workspace(),
        status="completed",
        content="hijacked",
        parts=text_parts("hijacked"),
        usage=USAGE_A,
    )
    assert done is False, (
        f"expected finalize under another workspace id to return False, got {done!r}"
    )
    after = await assistant_row(store, turn)
    assert after == before, (
        f"expected a foreign-workspace finalize to change nothing, but the row went from "
        f"{describe_message(before)} to {describe_message(after)}"
    )
    usage = await store.usage_for(message_id=turn.assistant_message_id)
    assert usage == [], f"expected a foreign-workspace finalize to write no usage, found {usage}"


# --- MSG-9 ---------------------------------------------------------------------------------


@pytest.mark.requirement("MSG-9a")
@pytest.mark.parametrize("op", PERSIST_OPS)
async def test_persist_on_missing_chat_returns_none(store, op):
    """A persist on a chat id that names nothing returns None and writes no row."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    missing = missing_id_like(chat)
    turn = new_turn_id()
    result = await persist(store, op, chat_id=missing, workspace_id=ws, turn_id=turn)
    assert result is None, f"expected {op} on a missing chat to return None, got {result!r}"
    for chat_id in (missing, chat):
        rows = await store.list_messages(chat_id=chat_id, workspace_id=ws)
        assert rows == [], (
            f"expected {op} on a missing chat to write nothing, found in chat {chat_id!r}: "
            f"{[describe_message(m) for m in rows]}"
        )


@pytest.mark.requirement("MSG-9b", "WS-1b")
@pytest.mark.parametrize("op", PERSIST_OPS)
async def test_persist_on_foreign_chat_returns_none(store, op):
    """A persist on another workspace's chat returns None and writes no row anywhere."""
    owner_ws, foreign_ws = new_workspace(), new_workspace()
    chat = await store.create_chat(workspace_id=owner_ws)
    turn = new_turn_id()
    result = await persist(store, op, chat_id=chat, workspace_id=foreign_ws, turn_id=turn)
    assert result is None, (
        f"expected {op} on another workspace's chat to return None, got {result!r}"
    )
    for ws in (owner_ws, foreign_ws):
        rows = await store.list_messages(chat_id=chat, workspace_id=ws)
        assert rows == [], (
            f"expected {op} on another workspace's chat to write nothing, found under "
            f"workspace {ws!r}: {[describe_message(m) for m in rows]}"
        )
    # The owner's own persist of that turn is unaffected and makes the only row.
    own = await persist(store, op, chat_id=chat, workspace_id=owner_ws, turn_id=turn)
    assert own is not None, f"the owner's own {op} returned None after the foreign attempt"
    rows = await store.list_messages(chat_id=chat, workspace_id=owner_ws)
    found = [(m.id, m.workspace_id) for m in rows]
    assert found == [(own, owner_ws)], (
        f"expected the owner's one row {(own, owner_ws)}, found (id, workspace) {found}"
    )
