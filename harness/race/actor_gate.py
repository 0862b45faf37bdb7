"""The race engine's one view of an actor's statement gate.

Everything the engine asks of the gate goes through `ActorGate`: hold every step of
the actor (step mode: only statements sent while one of its operations is in flight,
never connect-time statements, pool pings or session housekeeping), say where it is
parked, release one hold point, wait for a change without polling, and list the
statements that were steps.
"""

from __future__ import annotations

from harness.proxy.errors import WaitTimeout
from harness.proxy.statement_gate import StatementEvent, StatementGate


class ActorGate:
    """One actor's gate: all of its connections (a pool included) pass through it."""

    def __init__(self, gate: StatementGate) -> None:
        self.gate = gate

    def hold_steps(self) -> None:
        """From now on, hold each step before it reaches the server and before its commit."""
        self.gate.hold_steps()

    def begin_operation(self) -> None:
        """An operation of the actor starts: its statements are steps."""
        self.gate.begin_operation()

    def end_operation(self) -> None:
        """The operation returned: statements sent from now on (pool pings) are no steps."""
        self.gate.end_operation()

    def parked(self) -> StatementEvent | None:
        """The statement the actor is parked at: held before it reaches the server, or
        executed with its commit held; None while it runs (or waits on a lock)."""
        failure = self.gate.failure
        if failure is not None:
            raise failure
        for event in self.gate.held:
            if event.held or (event.sync_held and event.executed):
                return event
        return None

    def release(self, event: StatementEvent) -> None:
        """Let the parked statement pass its hold point (start, or commit)."""
        if event.held:
            self.gate.release(event.seq)
        else:
            self.gate.release_sync(event.seq)

    def version(self) -> int:
        """A number that grows whenever the gate's state changes."""
        return self.gate.version

    async def wait_changed(self, since: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Until the gate's state changed after `since` (True), or `timeout` passed (False)."""
        try:
            await self.gate.wait_changed(since, timeout)
        except WaitTimeout:
            return False
        return True

    def steps(self) -> list[StatementEvent]:
        """The actor's statements that were schedule steps, in order."""
        return self.gate.steps

    def text(self, event: StatementEvent) -> str:
        text = " ".join(event.text.split())
        return text if len(text) <= 90 else text[:87] + "..."

    def cut(self) -> None:
        self.gate.cut()

    def cut_after_send(self, event: StatementEvent) -> None:
        self.gate.cut_after_send(event.seq)

    async def wait_finished(self, event: StatementEvent, timeout: float) -> StatementEvent:  # noqa: ASYNC109
        return await self.gate.wait_completed(event.seq, timeout=timeout)
