"""Deliberately broken variants of the reference streaming writer, one bug each (CW-1 .. CW-7).

Each breaks exactly the requirement its docstring names and is otherwise the reference
writer, so a run against it must fail that requirement's scenarios and no other. Load
one as `reference_impl.broken_writer:<attribute>`, e.g.
`reference_impl.broken_writer:writes_every_delta`. Never use them for anything else.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb

from reference_impl.adapter import ReferenceAdapter
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
    """CW-5: delete forgets the id but leaves its timer armed, which then writes it."""

    async def delete(self, message_id: str, workspace_id: str) -> None:
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


def _with_writer(name: str, writer_class: type[PgStreamWriter]) -> ReferenceAdapter:
    """The reference adapter, its stores opening `writer_class` as their writer."""
    store_class = type(
        f"{writer_class.__name__}Store", (PgTurnStore,), {"writer_class": writer_class}
    )
    return ReferenceAdapter(name=f"broken-{name.replace('_', '-')}", store_class=store_class)


writes_every_delta = _with_writer("writes_every_delta", WritesEveryDelta)
structural_waits_for_timer = _with_writer("structural_waits_for_timer", StructuralWaitsForTimer)
flush_returns_while_in_flight = _with_writer(
    "flush_returns_while_in_flight", FlushReturnsWhileInFlight
)
flush_all_dirty_only = _with_writer("flush_all_dirty_only", FlushAllDirtyOnly)
delete_leaves_timer_armed = _with_writer("delete_leaves_timer_armed", DeleteLeavesTimerArmed)
updates_skip_the_guard = _with_writer("updates_skip_the_guard", UpdatesSkipTheGuard)

VARIANTS: dict[str, str] = {
    "writes_every_delta": "CW-1",
    "structural_waits_for_timer": "CW-2",
    "flush_returns_while_in_flight": "CW-3",
    "flush_all_dirty_only": "CW-4",
    "delete_leaves_timer_armed": "CW-5",
    "updates_skip_the_guard": "CW-7",
}
"""Each variant's attribute name and the one requirement it breaks."""
