"""What the streaming-writer scenarios share: the window, the wire, a writer's lifetime.

Time is a `VirtualClock` the scenario advances, so a window ends when the scenario says;
writes are counted at the writer replica's statement gate (the wire), never taken from
the writer's word; "has not returned" is decided once every task is blocked, not after
a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio

from harness import Message, TurnStore
from harness.contract import StreamWriter
from harness.errors import ScenarioPremiseError
from harness.proxy.statement_gate import StatementEvent, StatementGate
from harness.virtual_time import VirtualClock

from .support import Turn, text_parts

WINDOW = timedelta(milliseconds=33)
"""The debounce window of the scenarios (the seed's default)."""


def premise(holds: bool, message: str) -> None:
    """A scenario whose race did not happen proves nothing: no verdict, never a pass."""
    if not holds:
        raise ScenarioPremiseError(message)


BLOCKED_POLL = 0.001
"""How often `settle` looks for a task still running. Not anyio's 100 ms: psycopg wakes a
task waiting on its socket every 100 ms, and two 100 ms periods can lock in step, each
look landing just as psycopg's task woke, for as long as the statement is held (a scenario
once stalled ten minutes so)."""
SETTLE_BOUND = 30.0


async def settle(clock: VirtualClock) -> None:
    """Until everything started so far has run as far as it can: a round trip to every
    process that follows the clock, then every other task of this loop blocked."""
    await clock.advance(0)
    with anyio.fail_after(SETTLE_BOUND):
        while True:
            if _all_others_blocked():
                return
            await anyio.sleep(BLOCKED_POLL)  # bounds a wait on the other tasks


def _all_others_blocked() -> bool:
    """Every other task of the loop waits on a future not yet done (what
    anyio.wait_all_tasks_blocked checks; the scenarios run on asyncio)."""
    this = asyncio.current_task()
    return all(
        task._fut_waiter is not None and not task._fut_waiter.done()  # type: ignore[attr-defined]
        for task in asyncio.all_tasks()
        if task is not this
    )


@asynccontextmanager
async def opened_writer(
    store: TurnStore,
    clock: VirtualClock,
    *,
    debounce: timedelta = WINDOW,
    gate: StatementGate | None = None,
) -> AsyncIterator[StreamWriter]:
    """A writer on `store` whose window runs on `clock`, drained and closed on the way out
    (after opening `gate`, so a statement a failed scenario left held cannot hang it).
    Opened and closed in the scenario's own task: a writer's timers may live in a task
    group it entered when opened (structured concurrency)."""
    writer = await store.writer(debounce, timers=clock)
    try:
        yield writer
    finally:
        if gate is not None:
            gate.open()
        await writer.aclose()


class Wire:
    """The statements one replica sent from now on, as its proxy's gate saw them. A
    statement that only prepared another (psycopg prepares a query it runs often) ran
    nothing and is not counted."""

    def __init__(self, gate: StatementGate) -> None:
        self.gate = gate
        self.start = len(gate.events)

    def statements(self) -> list[StatementEvent]:
        return [
            event
            for event in self.gate.events[self.start :]
            if event.command_tags or event.error or not event.finished
        ]

    def count(self) -> int:
        return len(self.statements())

    def texts(self) -> list[str]:
        return [" ".join(event.text.split()) for event in self.statements()]

    async def completed(self, n: int) -> None:
        """Until n statements from now on have been answered."""
        version = self.gate.version
        while sum(event.finished for event in self.statements()) < n:
            version = await self.gate.wait_changed(version)


@dataclass
class Outcome:
    """An operation running in the background: whether it returned, and how."""

    done: bool = False
    value: Any = None
    error: BaseException | None = None

    async def run(self, operation: Awaitable[Any]) -> None:
        try:
            self.value = await operation
        except Exception as exc:
            self.error = exc
        finally:
            self.done = True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@asynccontextmanager
async def in_background(operation: Awaitable[Any]) -> AsyncIterator[Outcome]:
    """Run `operation` while the body goes on; leaving waits for it to end."""
    outcome = Outcome()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(outcome.run, operation)
        yield outcome


async def debounced_write_held(
    writer: StreamWriter, wire: Wire, clock: VirtualClock, turn: Turn, text: str
) -> int:
    """Give the writer a text delta, end its window, and hold the write its timer makes
    at the gate, in flight. Returns the held statement's number."""
    sent = wire.count()
    await writer.update(turn.assistant_message_id, turn.workspace_id, text, text_parts(text))
    premise(
        wire.count() == sent,
        "update wrote a plain text delta at once instead of debouncing it (CW-1): there is "
        "no timer-driven write to hold in flight",
    )
    seq = wire.gate.hold_next()
    await clock.advance(WINDOW.total_seconds())
    await wire.gate.wait_held(seq)
    return seq


async def row(store: TurnStore, turn: Turn) -> Message | None:
    return await store.get_message(
        message_id=turn.assistant_message_id, workspace_id=turn.workspace_id
    )
