"""An actor: one replica (its own TurnStore, its own application_name, its own proxy
listener) performing its operations in order while the engine decides the pace.

At statement level the actor runs freely and its gate holds each statement; at
operation level (adapters without the `network` capability) the actor waits
for a permit before each operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import anyio
import psycopg

from harness.contract import TurnStore
from harness.proxy.proxy import Proxy
from harness.proxy.statement_gate import StatementEvent, StatementGate
from harness.race.history import History, complete
from harness.race.scenario import Context, Op

APPLICATION_PREFIX = "turnproof-actor-"

# An error of these kinds means the request or its answer was lost: the operation may
# or may not have happened (Jepsen's "info"), so checkers must accept either outcome.
UNKNOWN_OUTCOME_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    ConnectionError,
    EOFError,
)


@dataclass
class Actor:
    name: str
    ops: list[Op]
    store: TurnStore
    history: History
    context: Context
    transcript: list[str]
    proxy: Proxy | None = None
    gate: StatementGate | None = None
    permits: tuple[anyio.abc.ObjectSendStream[None], anyio.abc.ObjectReceiveStream[None]] = field(
        default_factory=lambda: anyio.create_memory_object_stream[None](math.inf)
    )
    permits_given: int = 0
    ops_finished: int = 0
    done: bool = False
    next_seq: int = 1  # the gate's number for the actor's next unfinished statement
    was_blocked: bool = False

    @property
    def application_name(self) -> str:
        return application_name(self.name)

    @property
    def awaiting_permit(self) -> bool:
        """Parked between operations (operation level): every permit given was used."""
        return not self.done and self.ops_finished == self.permits_given

    def statements(self) -> list[StatementEvent]:
        return self.gate.events if self.gate is not None else []

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
                arguments = op.resolve(self.context)
                record = self.history.invoke(self.name, op.operation, arguments)
                try:
                    result = await op.perform(self.store, self.context)
                except UNKNOWN_OUTCOME_ERRORS as exc:
                    complete(record, error=exc, unknown=True)
                except Exception as exc:
                    complete(record, error=exc)
                else:
                    complete(record, result=result)
                self.transcript.append(f"  {record.describe()}")
                self.ops_finished += 1
        finally:
            self.done = True

    def stop(self) -> None:
        """No more permits: an actor waiting for one finishes at once."""
        self.permits[0].close()

    def permit(self) -> None:
        self.permits_given += 1
        self.permits[0].send_nowait(None)


def application_name(actor: str) -> str:
    """How the engine finds an actor's backends in pg_stat_activity."""
    return APPLICATION_PREFIX + actor
