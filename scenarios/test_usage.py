"""Usage: one row per message, the first committed usage authoritative (USG-1).

The sequential forms; two racing writers run under the race engine.
"""

from __future__ import annotations

import pytest

from harness import TurnStore

from .support import USAGE_A, USAGE_B, Turn, streaming_turn, text_parts, usage_values

pytestmark = pytest.mark.anyio


async def finalize(store: TurnStore, turn: Turn, *, text: str, usage) -> bool:
    return await store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        status="completed",
        content=text,
        parts=text_parts(text),
        usage=usage,
    )


async def usage_rows(store: TurnStore, turn: Turn) -> list[tuple]:
    rows = await store.usage_for(message_id=turn.assistant_message_id)
    assert all(row.message_id == turn.assistant_message_id for row in rows), (
        f"usage_for returned rows of other messages: {rows}"
    )
    return [usage_values(row) for row in rows]


@pytest.mark.requirement("USG-1")
async def test_second_finalize_leaves_first_usage(store):
    """A second finalize with other usage returns normally and leaves the first usage row alone."""
    turn = await streaming_turn(store)
    assert await finalize(store, turn, text="first", usage=USAGE_A) is True
    assert await usage_rows(store, turn) == [usage_values(USAGE_A)]
    await finalize(store, turn, text="second", usage=USAGE_B)  # must not raise
    assert await usage_rows(store, turn) == [usage_values(USAGE_A)], (
        "the second finalize's usage replaced or joined the first"
    )


@pytest.mark.requirement("USG-1")
async def test_usage_from_another_replica_leaves_first_usage(store, open_store):
    """A second writer of usage on another replica leaves the first usage row alone."""
    turn = await streaming_turn(store)
    other = await open_store(name="replica-b")
    assert await finalize(store, turn, text="first", usage=USAGE_A) is True
    await finalize(other, turn, text="second", usage=USAGE_B)  # must not raise
    assert await usage_rows(store, turn) == [usage_values(USAGE_A)]


@pytest.mark.requirement("USG-1")
async def test_first_finalize_carrying_usage_is_authoritative(store):
    """A finalize without usage writes none; the first one that carries usage writes the row."""
    turn = await streaming_turn(store)
    assert await finalize(store, turn, text="no usage yet", usage=None) is True
    assert await usage_rows(store, turn) == []
    await finalize(store, turn, text="with usage", usage=USAGE_B)
    assert await usage_rows(store, turn) == [usage_values(USAGE_B)]
    await finalize(store, turn, text="later usage", usage=USAGE_A)  # must not raise
    await finalize(store, turn, text="no usage again", usage=None)
    assert await usage_rows(store, turn) == [usage_values(USAGE_B)]


@pytest.mark.requirement("USG-1")
async def test_usage_is_kept_per_message(store):
    """Each message keeps its own single usage row."""
    first = await streaming_turn(store)
    second = await streaming_turn(store, workspace_id=first.workspace_id, chat_id=first.chat_id)
    assert await finalize(store, first, text="a", usage=USAGE_A) is True
    assert await finalize(store, second, text="b", usage=USAGE_B) is True
    assert await usage_rows(store, first) == [usage_values(USAGE_A)]
    assert await usage_rows(store, second) == [usage_values(USAGE_B)]
