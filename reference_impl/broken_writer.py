"""Deliberately broken variants of the reference streaming writer, one bug each (CW-1 .. CW-7).

Each breaks exactly the clause its declaration names (`breaks`, with the `channel` through
which the suite catches it) and is otherwise the reference writer, so a run against it must
fail that clause's scenarios and no other. Load one as
`reference_impl.broken_writer:<attribute>`, e.g. `reference_impl.broken_writer:writes_every_delta`.
Never use them for anything else.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb

from reference_impl.broken_variant import BrokenVariant, Channel
from reference_impl.store import BUMP_UPDATED_AT, PgTurnStore
from reference_impl.stream_writer import Parts, Pending, PgStreamWriter


class WritesEveryDelta(PgStreamWriter):
    """CW-1: no debouncing at all; every delta is a write."""

    def _writes_at_once(self, pending: Pending) -> bool:
        return True


class StructuralWaitsForTimer(PgStreamWriter):
    """CW-2: a finish part, tool call or finished reasoning waits for the window like a delta."""

    def _writes_at_once(self, pending: Pending) -> bool:
        return self._debounce <= 0


class FlushReturnsWhileInFlight(PgStreamWriter):
    """CW-3: flush(id) returns at once while a timer write of the id is in flight."""

    async def flush(self, message_id: str) -> None:
        pending = self._pending.get(message_id)
        if pending is not None and pending.lock.locked():
            return
        await super().flush(message_id)


class FlushAllDirtyOnly(PgStreamWriter):
    """CW-4: flush_all takes the dirty ids only, not the ids whose write is in flight."""

    async def flush_all(self) -> None:
        for message_id, pending in [(i, p) for i, p in self._pending.items() if p.dirty]:
            await self._drain(message_id, pending)


class DeleteLeavesTimerArmed(PgStreamWriter):
    """CW-5a: delete of an id with no write in flight forgets the id but leaves its timer
    armed, which then writes it."""

    async def delete(self, message_id: str, workspace_id: str) -> None:
        pending = self._pending.get(message_id)
        if pending is not None and pending.lock.locked():
            await super().delete(message_id, workspace_id)
            return
        self._pending.pop(message_id, None)
        await self._store.delete_message(message_id=message_id, workspace_id=workspace_id)


class UpdatesSkipTheGuard(PgStreamWriter):
    """CW-7: the writer's own UPDATE, without the MSG-4 status guard: a debounced write that
    lands after finalize turns the row back to streaming."""

    async def _write_step(
        self, message_id: str, workspace_id: str, content: str, parts: Parts
    ) -> None:
        # The bug: going around the store's guarded append_step.
        await self._store._changed(
            f"""
            UPDATE messages
               SET status = 'streaming', content = %(content)s, parts = %(parts)s,
                   updated_at = {BUMP_UPDATED_AT}
             WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
            """,
            {
                "message_id": message_id,
                "workspace_id": workspace_id,
                "content": content,
                "parts": Jsonb(parts),
            },
        )


class DeleteSparesWritesInFlight(PgStreamWriter):
    """CW-5b: delete of an id whose write is in flight deletes the row only, trusting that
    write to finish the id: the newer state pending behind it stays, and a flush writes it."""

    async def delete(self, message_id: str, workspace_id: str) -> None:
        pending = self._pending.get(message_id)
        if pending is not None and pending.lock.locked():
            await self._store.delete_message(message_id=message_id, workspace_id=workspace_id)
            return
        await super().delete(message_id, workspace_id)


class DebounceDropsOpenReasoning(PgStreamWriter):
    """CW-6: a debounced write leaves out the reasoning parts not finished yet (they will
    change anyway), so a flushed row lacks what a debounce-0 writer leaves."""

    async def _write_step(
        self, message_id: str, workspace_id: str, content: str, parts: Parts
    ) -> None:
        if self._debounce > 0:
            parts = [p for p in parts if p.get("type") != "reasoning" or p.get("finished")]
        await super()._write_step(message_id, workspace_id, content, parts)


def _with_writer(
    writer_class: type[PgStreamWriter], breaks: str, channel: Channel
) -> BrokenVariant:
    """The reference adapter, its stores opening `writer_class` as their writer."""
    store_class = type(writer_class.__name__, (PgTurnStore,), {"writer_class": writer_class})
    return BrokenVariant(store_class, breaks=(breaks,), channel=channel)


writes_every_delta = _with_writer(WritesEveryDelta, "CW-1a", "sequential")
structural_waits_for_timer = _with_writer(StructuralWaitsForTimer, "CW-2a", "sequential")
flush_returns_while_in_flight = _with_writer(FlushReturnsWhileInFlight, "CW-3a", "network")
flush_all_dirty_only = _with_writer(FlushAllDirtyOnly, "CW-4a", "network")
delete_leaves_timer_armed = _with_writer(DeleteLeavesTimerArmed, "CW-5a", "sequential")
updates_skip_the_guard = _with_writer(UpdatesSkipTheGuard, "CW-7a", "network")
delete_spares_writes_in_flight = _with_writer(DeleteSparesWritesInFlight, "CW-5b", "network")
debounce_drops_open_reasoning = _with_writer(DebounceDropsOpenReasoning, "CW-6a", "sequential")
