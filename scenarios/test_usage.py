"""Usage: one row per message, the first committed usage authoritative (USG-1).

The sequential forms; two racing writers run under the race engine.
"""

from __future__ import annotations

import pytest

from harness import TurnStore, UsageIn

from .support import USAGE_A, USAGE_B, Turn, streaming_turn, text_parts, usage_values

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


async def finalize(store: TurnStore, turn: Turn, *, text: str, usage: UsageIn | None) -> bool:
    """Finalize the turn's assistant message to 'completed' with `text` and `usage`.

    No append_step anywhere here: a `turns` + `usage` store writes usage this way only."""
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
        f"expected usage_for({turn.assistant_message_id!r}) to return only that message's rows, "
        f"found rows of {[row.message_id for row in rows]}"
    )
    return [usage_values(row) for row in rows]


async def assert_usage(store: TurnStore, turn: Turn, expected: list[UsageIn], why: str) -> None:
    found = await usage_rows(store, turn)
    wanted = [usage_values(u) for u in expected]
    assert found == wanted, f"expected usage {wanted} ({why}), found {found}"


async def finalized(store: TurnStore, turn: Turn, *, text: str, usage: UsageIn | None) -> None:
    """A finalize of a live row, which must apply."""
    done = await finalize(store, turn, text=text, usage=usage)
    assert done is True, (
        f"expected finalize ({text!r}) of an existing row to return True, got {done!r}"
    )


@pytest.mark.requirement("USG-1a")
async def test_second_finalize_leaves_first_usage(store):
    """A second finalize with other usage returns normally and leaves the first usage row alone."""
    turn = await streaming_turn(store)
    await finalized(store, turn, text="first", usage=USAGE_A)
    await assert_usage(store, turn, [USAGE_A], "the first finalize's")
    await finalize(store, turn, text="second", usage=USAGE_B)  # must not raise
    await assert_usage(store, turn, [USAGE_A], "the first finalize's only, untouched by the second")


@pytest.mark.requirement("USG-1a")
async def test_usage_from_another_replica_leaves_first_usage(store, open_store):
    """A second writer of usage on another replica leaves the first usage row alone."""
    turn = await streaming_turn(store)
    other = await open_store(name="replica-b")
    await finalized(store, turn, text="first", usage=USAGE_A)
    await finalize(other, turn, text="second", usage=USAGE_B)  # must not raise
    await assert_usage(store, turn, [USAGE_A], "the first writer's only, untouched by the second")


@pytest.mark.requirement("USG-1a")
async def test_first_finalize_carrying_usage_is_authoritative(store):
    """A finalize without usage writes none; the first one that carries usage writes the row."""
    turn = await streaming_turn(store)
    await finalized(store, turn, text="no usage yet", usage=None)
    await assert_usage(store, turn, [], "none: the finalize carried no usage")
    await finalized(store, turn, text="with usage", usage=USAGE_B)
    await assert_usage(store, turn, [USAGE_B], "the first finalize carrying usage")
    await finalize(store, turn, text="later usage", usage=USAGE_A)  # must not raise
    await finalize(store, turn, text="no usage again", usage=None)
    await assert_usage(store, turn, [USAGE_B], "the first finalize carrying usage, kept")


@pytest.mark.requirement("USG-1c")
async def test_usage_is_kept_per_message(store):
    """Each message keeps its own single usage row."""
    first = await streaming_turn(store)
    second = await streaming_turn(store, workspace_id=first.workspace_id, chat_id=first.chat_id)
    await finalized(store, first, text="a", usage=USAGE_A)
    await finalized(store, second, text="b", usage=USAGE_B)
    await assert_usage(store, first, [USAGE_A], "the first message's own")
    await assert_usage(store, second, [USAGE_B], "the second message's own")
