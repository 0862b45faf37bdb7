"""An actor: one replica (its own TurnStore, its own application_name, its own proxy
listener) performing its operations in order while the engine decides the pace.

At statement level the actor runs freely and its gate holds each statement; at
operation level (adapters without the `network` capability) the actor waits
for a permit before each operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
import psycopg

from harness.contract import TurnStore
from harness.proxy.proxy import Proxy
from harness.proxy.statement_gate import StatementEvent
from harness.race.actor_gate import ActorGate
from harness.race.history import History, complete
from harness.race.outcome import Fault, LockWait
from harness.race.scenario import Context, Op

APPLICATION_PREFIX = "turnproof-actor-"


def unknown_outcome(error: BaseException) -> bool:
    """The request or its answer was lost: the operation may or may not have happened
    (Jepsen's "info"), so checkers must accept either outcome. A serialization failure or
    a deadlock is no such error: the transaction was rolled back, and the store raised."""
    if isinstance(error, (ConnectionError, EOFError)):
        return True
    if isinstance(error, psycopg.OperationalError):
        state = error.sqlstate
        return state is None or state.startswith(("08", "57P"))
    return False


@runtime_checkable
class Killable(Protocol):
    """A store living in a process of its own (found by behaviour: wrapped stores hide
    their type, never their methods)."""

    async def kill(self) -> None: ...

    def freeze(self) -> None: ...


@dataclass
class Actor:
    name: str
    ops: list[Op]
    store: TurnStore
    history: History
    context: Context
    transcript: list[str]
    proxy: Proxy | None = None
    gate: ActorGate | None = None
    permits: tuple[anyio.abc.ObjectSendStream[None], anyio.abc.ObjectReceiveStream[None]] = field(
        default_factory=lambda: anyio.create_memory_object_stream[None](math.inf)
    )
    permits_given: int = 0
    ops_finished: int = 0
    done: bool = False
    was_blocked: bool = False
    waits: list[LockWait] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    progress: anyio.Event = field(default_factory=anyio.Event)
    """Set (and replaced) whenever an operation of the actor returns or the actor ends."""

    @property
    def application_name(self) -> str:
        return application_name(self.name)

    @property
    def awaiting_permit(self) -> bool:
        """Parked between operations (operation level): every permit given was used."""
        return not self.done and self.ops_finished == self.permits_given

    def statements(self) -> list[StatementEvent]:
        return self.gate.steps() if self.gate is not None else []

    async def run(self, gated_by_permit: bool) -> None:
        """Perform every operation in order; record each; never raise (the engine judges)."""
        _, receive = self.permits
        try:
            for op in self.ops:
                if gated_by_permit:
                    try:
                        await receive.receive()
                    except anyio.EndOfStream:  # stopped: the interleaving is abandoned
                        return
                await self._perform(op)
        finally:
            self.done = True
            self._notify()

    async def _perform(self, op: Op) -> None:
        arguments = op.resolve(self.context)
        record = self.history.invoke(self.name, op.operation, arguments)
        if self.gate is not None:
            self.gate.begin_operation()
        try:
            result = await op.perform(self.store, self.context)
        except Exception as exc:
            complete(record, error=exc, unknown=unknown_outcome(exc))
        else:
            complete(record, result=result)
        finally:
            if self.gate is not None:
                self.gate.end_operation()
        self.transcript.append(f"  {record.describe()}")
        self.ops_finished += 1
        self._notify()

    def _notify(self) -> None:
        self.progress.set()
        self.progress = anyio.Event()

    def stop(self) -> None:
        """No more permits: an actor waiting for one finishes at once."""
        self.permits[0].close()

    def permit(self) -> None:
        self.permits_given += 1
        self.permits[0].send_nowait(None)


def application_name(actor: str) -> str:
    """How the engine finds an actor's backends in pg_stat_activity."""
    return APPLICATION_PREFIX + actor
