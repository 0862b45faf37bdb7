"""Tenant isolation: no operation taking a workspace id reaches outside it (WS-1).

The foreign workspace is either one that exists (it has its own chat and
turn) or a freshly guessed id; both must see and change nothing of the owner's.

WS-1 is a property of other capabilities' operations, so each scenario declares
the capabilities whose operations it checks (`turns` always; `streaming` for
steps, finalize and legacy rows; `runs` for runs) and is skipped, never failed,
for an adapter lacking one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness import Message, Run, TurnStore

from .support import (
    assert_not_run_already_active,
    begin_failure,
    describe_message,
    new_turn_id,
    new_workspace,
    streaming_turn,
    text_parts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


@dataclass(frozen=True)
class Owner:
    workspace_id: str
    chat_id: str
    turn_id: str
    message_ids: tuple[str, ...]  # user row, assistant row (+ legacy row, with `streaming`)
    assistant_message_id: str
    run_id: str | None  # only when made `with_run`


@dataclass(frozen=True)
class State:
    messages: list[Message]
    run: Run | None
    foreign_messages: list[Message]

    def describe(self) -> str:
        run = f"run {self.run.id!r} {self.run.status!r}" if self.run else "no run read"
        return (
            f"owner's rows {[describe_message(m) for m in self.messages]}, {run}, "
            f"intruder's rows {[describe_message(m) for m in self.foreign_messages]}"
        )


async def make_owner(
    store: TurnStore, *, with_steps: bool = False, with_run: bool = False
) -> Owner:
    """A workspace with a chat and a turn; `with_steps` (a `streaming` scenario): one step in
    and a legacy row; `with_run` (a `runs` scenario): an active run linked to the turn."""
    turn = await streaming_turn(store, text="owner's question")
    message_ids = [turn.user_message_id, turn.assistant_message_id]
    if with_steps:
        assert await store.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content="owner's partial answer",
            parts=text_parts("owner's partial answer"),
        ), "set-up: append_step on the owner's fresh streaming row returned False; expected True"
        message_ids.append(
            await store.insert_legacy_message(
                chat_id=turn.chat_id, workspace_id=turn.workspace_id, content="owner's old answer"
            )
        )
    run_id = None
    if with_run:
        run = await store.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
        assert await store.link_assistant(run_id=run.id, message_id=turn.assistant_message_id), (
            f"set-up: link_assistant of run {run.id!r} to the owner's assistant message "
            f"{turn.assistant_message_id!r} returned False; expected True"
        )
        run_id = run.id
    return Owner(
        workspace_id=turn.workspace_id,
        chat_id=turn.chat_id,
        turn_id=turn.turn_id,
        message_ids=tuple(message_ids),
        assistant_message_id=turn.assistant_message_id,
        run_id=run_id,
    )


@pytest.fixture(params=["existing", "guessed"])
async def foreign(request, store) -> tuple[str, str | None]:
    """The intruding workspace id, and its own chat when it is a workspace that exists."""
    ws = new_workspace()
    if request.param == "guessed":
        return ws, None
    foreign_turn = await streaming_turn(store, workspace_id=ws, text="foreign question")
    return ws, foreign_turn.chat_id


async def state(store: TurnStore, owner: Owner, foreign_ws: str, foreign_chat: str | None):
    """Everything the owner (and the intruder, when it exists) can read of their own."""
    foreign_messages = (
        await store.list_messages(chat_id=foreign_chat, workspace_id=foreign_ws)
        if foreign_chat
        else []
    )
    run = (
        await store.latest_run(chat_id=owner.chat_id, workspace_id=owner.workspace_id)
        if owner.run_id
        else None
    )
    return State(
        messages=await store.list_messages(chat_id=owner.chat_id, workspace_id=owner.workspace_id),
        run=run,
        foreign_messages=foreign_messages,
    )


async def assert_unchanged(
    store: TurnStore, owner: Owner, foreign: tuple[str, str | None], before: State, what: str
) -> None:
    after = await state(store, owner, *foreign)
    assert after == before, (
        f"expected {what} under a foreign workspace id to change nothing; before: "
        f"{before.describe()}; after: {after.describe()}"
    )


async def assert_foreign_reads_see_nothing(store: TurnStore, owner: Owner, foreign_ws: str) -> None:
    for message_id in owner.message_ids:
        seen = await store.get_message(message_id=message_id, workspace_id=foreign_ws)
        assert seen is None, (
            f"expected get_message of the owner's {message_id!r} under a foreign workspace id to "
            f"return None, got {describe_message(seen)}"
        )
    listed = await store.list_messages(chat_id=owner.chat_id, workspace_id=foreign_ws)
    assert listed == [], (
        "expected list_messages of the owner's chat under a foreign workspace id to return [], "
        f"got {[describe_message(m) for m in listed]}"
    )


@pytest.mark.requirement("WS-1a")
async def test_foreign_reads_see_nothing(store, foreign):
    """get_message and list_messages under a foreign workspace id return nothing."""
    owner = await make_owner(store)
    await assert_foreign_reads_see_nothing(store, owner, foreign[0])


@pytest.mark.requirement("WS-1a")
@pytest.mark.capability("streaming")
async def test_foreign_reads_see_no_steps_or_legacy_rows(store, foreign):
    """A stepped row and a legacy row are as invisible under a foreign workspace id."""
    owner = await make_owner(store, with_steps=True)
    await assert_foreign_reads_see_nothing(store, owner, foreign[0])


@pytest.mark.requirement("WS-1a")
@pytest.mark.capability("runs")
async def test_foreign_latest_run_sees_nothing(store, foreign):
    """latest_run of the owner's chat under a foreign workspace id returns None."""
    owner = await make_owner(store, with_run=True)
    run = await store.latest_run(chat_id=owner.chat_id, workspace_id=foreign[0])
    assert run is None, (
        f"expected latest_run of the owner's chat under a foreign workspace id to return None, "
        f"got run {run.id!r} ({run.status!r}) of workspace {run.workspace_id!r}"
    )


@pytest.mark.requirement("WS-1b")
async def test_foreign_persists_return_none_and_write_nothing(store, foreign):
    """Persisting onto the owner's chat under a foreign workspace returns None, writes nothing."""
    owner = await make_owner(store)
    foreign_ws, _ = foreign
    before = await state(store, owner, *foreign)
    for turn_id in (owner.turn_id, new_turn_id()):
        user = await store.persist_user_turn(
            chat_id=owner.chat_id, workspace_id=foreign_ws, turn_id=turn_id, text="intruder"
        )
        shell = await store.persist_assistant_shell(
            chat_id=owner.chat_id, workspace_id=foreign_ws, turn_id=turn_id
        )
        known = " (the owner's own turn id)" if turn_id == owner.turn_id else ""
        assert user is None, f"expected a foreign persist_user_turn{known} to return None: {user!r}"
        assert shell is None, (
            f"expected a foreign persist_assistant_shell{known} to return None, got {shell!r}"
        )
    await assert_unchanged(store, owner, foreign, before, "persisting onto the owner's chat")


@pytest.mark.requirement("WS-1b")
@pytest.mark.capability("streaming")
async def test_foreign_message_updates_return_false_and_change_nothing(store, foreign):
    """append_step and finalize under a foreign workspace id return False and change nothing."""
    owner = await make_owner(store, with_steps=True)
    foreign_ws, _ = foreign
    before = await state(store, owner, *foreign)
    for message_id in owner.message_ids:
        stepped = await store.append_step(
            message_id=message_id,
            workspace_id=foreign_ws,
            content="intruder",
            parts=text_parts("intruder"),
        )
        assert stepped is False, (
            f"expected a foreign append_step on {message_id!r} to return False, got {stepped!r}"
        )
        done = await store.finalize(
            message_id=message_id,
            workspace_id=foreign_ws,
            status="completed",
            content="intruder",
            parts=text_parts("intruder"),
            usage=None,
        )
        assert done is False, (
            f"expected a foreign finalize of {message_id!r} to return False, got {done!r}"
        )
    await assert_unchanged(store, owner, foreign, before, "append_step and finalize")
    # The owner's turn is still live for its owner.
    assert await store.append_step(
        message_id=owner.assistant_message_id,
        workspace_id=owner.workspace_id,
        content="owner's next step",
        parts=text_parts("owner's next step"),
    ), "expected the owner's own next step to apply (True) after the intruder's attempts"


@pytest.mark.requirement("WS-1b", "RUN-2a")
async def test_foreign_begin_run_fails_and_changes_nothing(store, foreign):
    """begin_run on the owner's chat under a foreign workspace fails and changes no run."""
    owner = await make_owner(store, with_run=True)
    foreign_ws, _ = foreign
    before = await state(store, owner, *foreign)
    error = await begin_failure(store, chat_id=owner.chat_id, workspace_id=foreign_ws)
    assert_not_run_already_active(error, "the chat belongs to another workspace")
    await assert_unchanged(store, owner, foreign, before, "begin_run on the owner's chat")
    run = await store.latest_run(chat_id=owner.chat_id, workspace_id=foreign_ws)
    assert run is None, (
        f"expected no run of the owner's chat under the foreign workspace id, found {run!r}"
    )
