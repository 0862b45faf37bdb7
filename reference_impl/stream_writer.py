"""PgStreamWriter: the reference streaming writer (capability `coalescing`, CW-1 .. CW-7).

A model answer streams many small deltas a second; writing each one is wasted work.
The writer keeps the latest state of each message in memory and writes it once per
debounce window, through the store's guarded `append_step` (so a write that fires after
`finalize` matches nothing: CW-7). The rules that make it correct:

- one `Pending` per message id; `update` only replaces its latest state and arms one
  timer per window, whose write is one write: deltas given while it is in flight wait
  for the next window (CW-1);
- a structural change (CW-2, `is_structural`) writes before `update` returns;
- every write of an id holds that id's lock, so writes of one id never reorder, and
  `flush` waits for a timer write in flight, then writes again if the state changed
  meanwhile (CW-3);
- `flush_all` takes every id that is dirty or whose lock is held (CW-4);
- `delete` drops the pending state and disarms its timer before deleting the row, and a
  write in flight re-checks the state it belongs to, so nothing writes it again (CW-5).

The writer's timers run in a task group it enters when opened and leaves in `aclose`,
so (structured concurrency) open and close it from the same task.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.abc import TaskGroup

from harness.contract import RealTimers, Timers

if TYPE_CHECKING:
    from reference_impl.store import PgTurnStore

Parts = list[dict[str, Any]]


def _finished(parts: Parts, kind: str, key: str | None) -> set[Any]:
    """The finished parts of `kind`, named by `key` (or by their rank among that kind)."""
    of_kind = [p for p in parts if p.get("type") == kind]
    return {p.get(key) if key else rank for rank, p in enumerate(of_kind) if p.get("finished")}


def is_structural(written: Parts, latest: Parts) -> bool:
    """CW-2, exactly: since what was last written, a new `finish` part, a new `tool-call`
    part, a `tool-call` part turning finished, or a `reasoning` part turning finished."""

    def count(parts: Parts, kind: str) -> int:
        return sum(p.get("type") == kind for p in parts)

    def tool_calls(parts: Parts) -> set[Any]:
        return {p.get("toolCallId") for p in parts if p.get("type") == "tool-call"}

    return (
        count(latest, "finish") > count(written, "finish")
        or bool(tool_calls(latest) - tool_calls(written))
        or bool(
            _finished(latest, "tool-call", "toolCallId")
            - _finished(written, "tool-call", "toolCallId")
        )
        or bool(_finished(latest, "reasoning", None) - _finished(written, "reasoning", None))
    )


@dataclass(eq=False)
class Pending:
    """One message's coalescing state."""

    workspace_id: str
    content: str = ""
    parts: Parts = field(default_factory=list)
    dirty: bool = False  # holds state not yet written
    written: Parts = field(default_factory=list)  # the parts last written: CW-2's baseline
    lock: anyio.Lock = field(default_factory=anyio.Lock)  # held by the one write of this id
    timer: anyio.CancelScope | None = None  # the armed window, if any
    deleted: bool = False


class PgStreamWriter:
    """Write-behind for one store: see the module docstring."""

    def __init__(self, store: PgTurnStore, debounce: timedelta, timers: Timers, tasks: TaskGroup):
        self._store = store
        self._debounce = debounce.total_seconds()
        self._timers = timers
        self._tasks = tasks
        self._pending: dict[str, Pending] = {}

    @classmethod
    async def open(
        cls, store: PgTurnStore, debounce: timedelta, timers: Timers | None = None
    ) -> Self:
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        return cls(store, debounce, timers or RealTimers(), tasks)

    async def aclose(self) -> None:
        """Write what is pending, then stop the timers."""
        try:
            await self.flush_all()
        finally:
            self._tasks.cancel_scope.cancel()
            await self._tasks.__aexit__(None, None, None)

    async def update(self, message_id: str, workspace_id: str, content: str, parts: Parts) -> None:
        pending = self._pending.get(message_id)
        if pending is None:
            pending = self._pending[message_id] = Pending(workspace_id)
        pending.content, pending.parts, pending.dirty = content, copy.deepcopy(parts), True
        if self._writes_at_once(pending):
            await self._drain(message_id, pending)
        elif pending.timer is None:
            pending.timer = anyio.CancelScope()
            deadline = self._timers.now() + self._debounce
            self._tasks.start_soon(self._fire_at, deadline, message_id, pending, pending.timer)

    def _writes_at_once(self, pending: Pending) -> bool:
        return self._debounce <= 0 or is_structural(pending.written, pending.parts)

    async def flush(self, message_id: str) -> None:
        pending = self._pending.get(message_id)
        if pending is not None:
            await self._drain(message_id, pending)

    async def flush_all(self) -> None:
        busy = [(i, p) for i, p in self._pending.items() if p.dirty or p.lock.locked()]
        for message_id, pending in busy:
            await self._drain(message_id, pending)

    async def delete(self, message_id: str, workspace_id: str) -> None:
        pending = self._pending.pop(message_id, None)
        if pending is not None:
            self._disarm(pending)
            pending.deleted, pending.dirty = True, False
        await self._store.delete_message(message_id=message_id, workspace_id=workspace_id)

    async def _drain(self, message_id: str, pending: Pending) -> None:
        """Write now what the window would have written later."""
        self._disarm(pending)
        await self._write(message_id, pending)

    def _disarm(self, pending: Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    async def _fire_at(
        self, deadline: float, message_id: str, pending: Pending, timer: anyio.CancelScope
    ) -> None:
        with timer:
            await self._timers.sleep_until(deadline)
        if timer.cancel_called:  # flushed, deleted or closed first
            return
        pending.timer = None
        # One write per window: deltas given while it is in flight arm the next window.
        # A failed write leaves the state dirty: the next flush retries it and raises.
        with contextlib.suppress(Exception):
            await self._write(message_id, pending, until_clean=False)

    async def _write(self, message_id: str, pending: Pending, *, until_clean: bool = True) -> None:
        """Write the latest state, one write of this id at a time; `until_clean`: again while
        it changed meanwhile, so that it is written on return (CW-3)."""
        async with pending.lock:
            while pending.dirty and not pending.deleted:
                content, parts = pending.content, pending.parts
                pending.dirty = False
                try:
                    await self._write_step(message_id, pending.workspace_id, content, parts)
                except BaseException:
                    pending.dirty = True
                    raise
                pending.written = parts
                if not until_clean:
                    return

    async def _write_step(
        self, message_id: str, workspace_id: str, content: str, parts: Parts
    ) -> None:
        """One write, through the MSG-4 guard: after a finalize it matches nothing (CW-7)."""
        await self._store.append_step(
            message_id=message_id, workspace_id=workspace_id, content=content, parts=parts
        )
