"""Tenant isolation: no operation taking a workspace id reaches outside it (WS-1).

The foreign workspace is either one that exists (it has its own chat and
turn) or a freshly guessed id; both must see and change nothing of the owner's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness import Message, Run, TurnStore

from .support import (
    assert_not_run_already_active,
    begin_failure,
    new_turn_id,
    new_workspace,
    streaming_turn,
    text_parts,
)

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Owner:
    workspace_id: str
    chat_id: str
    turn_id: str
    message_ids: tuple[str, ...]  # user row, assistant row, legacy row (with `streaming`)
    assistant_message_id: str
    run_id: str | None  # None when the adapter does not declare `runs`


@dataclass(frozen=True)
class State:
    messages: list[Message]
    run: Run | None
    foreign_messages: list[Message]


async def make_owner(store: TurnStore, capabilities: frozenset[str]) -> Owner:
    """A workspace with a chat and a turn; with `streaming`, one step in and a legacy row;
    with `runs`, an active run linked to the turn."""
    turn = await streaming_turn(store, text="owner's question")
    message_ids = [turn.user_message_id, turn.assistant_message_id]
    if "streaming" in capabilities:
        assert await store.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content="owner's partial answer",
            parts=text_parts("owner's partial answer"),
        )
        message_ids.append(
            await store.insert_legacy_message(
                chat_id=turn.chat_id, workspace_id=turn.workspace_id, content="owner's old answer"
            )
        )
    run_id = None
    if "runs" in capabilities:
        run = await store.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
        assert await store.link_assistant(run_id=run.id, message_id=turn.assistant_message_id)
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


@pytest.mark.requirement("WS-1")
async def test_foreign_reads_see_nothing(adapter, store, foreign):
    """get_message, list_messages and latest_run under a foreign workspace id return nothing."""
    owner = await make_owner(store, adapter.capabilities)
    foreign_ws, _ = foreign
    for message_id in owner.message_ids:
        seen = await store.get_message(message_id=message_id, workspace_id=foreign_ws)
        assert seen is None, f"get_message under a foreign workspace returned {seen}"
    listed = await store.list_messages(chat_id=owner.chat_id, workspace_id=foreign_ws)
    assert listed == [], f"list_messages under a foreign workspace returned {listed}"
    if owner.run_id is not None:
        run = await store.latest_run(chat_id=owner.chat_id, workspace_id=foreign_ws)
        assert run is None, f"latest_run under a foreign workspace returned {run}"


@pytest.mark.requirement("WS-1")
async def test_foreign_persists_return_none_and_write_nothing(adapter, store, foreign):
    """Persisting onto the owner's chat under a foreign workspace returns None, writes nothing."""
    owner = await make_owner(store, adapter.capabilities)
    foreign_ws, foreign_chat = foreign
    before = await state(store, owner, foreign_ws, foreign_chat)
    for turn_id in (owner.turn_id, new_turn_id()):
        user = await store.persist_user_turn(
            chat_id=owner.chat_id, workspace_id=foreign_ws, turn_id=turn_id, text="intruder"
        )
        shell = await store.persist_assistant_shell(
            chat_id=owner.chat_id, workspace_id=foreign_ws, turn_id=turn_id
        )
        known = " (the owner's own turn id)" if turn_id == owner.turn_id else ""
        assert user is None, f"a foreign persist_user_turn{known} returned {user!r}"
        assert shell is None, f"a foreign persist_assistant_shell{known} returned {shell!r}"
    assert await state(store, owner, foreign_ws, foreign_chat) == before


@pytest.mark.requirement("WS-1")
@pytest.mark.capability("streaming")
async def test_foreign_message_updates_return_false_and_change_nothing(adapter, store, foreign):
    """append_step and finalize under a foreign workspace id return False and change nothing."""
    owner = await make_owner(store, adapter.capabilities)
    foreign_ws, foreign_chat = foreign
    before = await state(store, owner, foreign_ws, foreign_chat)
    for message_id in owner.message_ids:
        stepped = await store.append_step(
            message_id=message_id,
            workspace_id=foreign_ws,
            content="intruder",
            parts=text_parts("intruder"),
        )
        assert stepped is False, f"a foreign append_step returned {stepped!r}"
        done = await store.finalize(
            message_id=message_id,
            workspace_id=foreign_ws,
            status="completed",
            content="intruder",
            parts=text_parts("intruder"),
            usage=None,
        )
        assert done is False, f"a foreign finalize returned {done!r}"
    assert await state(store, owner, foreign_ws, foreign_chat) == before
    # The owner's turn is still live for its owner.
    assert await store.append_step(
        message_id=owner.assistant_message_id,
        workspace_id=owner.workspace_id,
        content="owner's next step",
        parts=text_parts("owner's next step"),
    )


@pytest.mark.requirement("WS-1", "RUN-2")
async def test_foreign_begin_run_fails_and_changes_nothing(adapter, store, foreign):
    """begin_run on the owner's chat under a foreign workspace fails and changes no run."""
    owner = await make_owner(store, adapter.capabilities)
    foreign_ws, foreign_chat = foreign
    before = await state(store, owner, foreign_ws, foreign_chat)
    error = await begin_failure(store, chat_id=owner.chat_id, workspace_id=foreign_ws)
    assert_not_run_already_active(error, "the chat belongs to another workspace")
    assert await state(store, owner, foreign_ws, foreign_chat) == before
    assert await store.latest_run(chat_id=owner.chat_id, workspace_id=foreign_ws) is None
