"""What one interleaving did: the schedule, each actor's operations and statements.

Checks read the final state through `reader` (a store on the interleaving's
database); race predicates read the observed order of statements, which the
gate timestamps as they pass, so "X reached the database after Y committed" is
a fact, not an assumption.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from harness.contract import TurnStore
from harness.proxy.statement_gate import StatementEvent
from harness.race.history import History, OperationRecord
from harness.race.scenario import Context
from harness.race.schedule import Schedule
from harness.race.strategies import Decision


@dataclass
class LockWait:
    """An actor's statement waiting on other sessions' locks (times: time.monotonic())."""

    actor: str
    blockers: tuple[str, ...]
    started_at: float
    ended_at: float | None = None


@dataclass(frozen=True)
class Fault:
    """A fault the schedule inflicted: a cut, a terminated backend, a killed process."""

    actor: str
    kind: str
    at: float  # time.monotonic()
    description: str


@dataclass
class RaceOutcome:
    race: str
    schedule: Schedule
    context: Context
    history: History
    statements: dict[str, list[StatementEvent]]
    waited: set[str] = field(default_factory=set)
    finished_at: datetime | None = None  # the database clock when the last actor finished
    transcript: list[str] = field(default_factory=list)
    reader: TurnStore | None = None
    capabilities: frozenset[str] = frozenset()
    """What the adapter declares: a check may judge more where the adapter claims more."""
    decisions: list[Decision] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    """The choice index taken at each decision (0: the non-preemptive choice)."""
    shortest: Schedule = ()
    """The schedule without its trailing non-preemptive steps: what a rerun line says."""
    steps: dict[str, int] = field(default_factory=dict)
    """How many steps each actor took in this interleaving."""
    waits: list[LockWait] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def operations(self, actor: str) -> list[OperationRecord]:
        return self.history.of(actor)

    def result(self, actor: str, index: int = 0) -> Any:
        """The value the actor's operation returned; AssertionError if it did not return."""
        record = self.operations(actor)[index]
        if record.outcome != "ok":
            raise AssertionError(f"expected {record.describe()} to return, it did not")
        return record.result

    def error(self, actor: str, index: int = 0) -> BaseException | None:
        return self.operations(actor)[index].error

    def reached_after(self, later: str, earlier: str) -> bool:
        """Some statement of `later` reached the database after all of `earlier`'s committed.

        At operation level (no statements seen) the same is read from the history:
        an operation of `later` began after every one of `earlier`'s had returned.
        """
        if not self.statements.get(later) and not self.statements.get(earlier):
            done = [op.completed_at for op in self.operations(earlier)]
            starts = [op.invoked_at for op in self.operations(later)]
        else:
            done = [s.completed_at for s in self.statements.get(earlier, [])]
            starts = [s.forwarded_at for s in self.statements.get(later, [])]
        if not done or any(t is None for t in done):
            return False
        last = max(t for t in done if t is not None)
        return any(t is not None and t > last for t in starts)

    def overlapped(self, actor: str, other: str) -> bool:
        """Some statement of `actor` reached the database while one of `other`'s was
        executing or executed but uncommitted (forwarded, not yet completed)."""
        return any(
            mine.forwarded_at is not None
            and theirs.forwarded_at is not None
            and theirs.forwarded_at < mine.forwarded_at
            and (theirs.completed_at is None or mine.forwarded_at < theirs.completed_at)
            for mine in self.statements.get(actor, [])
            for theirs in self.statements.get(other, [])
        )

    def committed_first(self, *actors: str) -> str:
        """Of these actors, the one whose work finished first: its last statement's
        completion at statement level, its last operation's return otherwise."""

        def finished(actor: str) -> float:
            statements = self.statements.get(actor) or []
            if statements:
                return max(s.completed_at or float("inf") for s in statements)
            return max(op.completed_at or float("inf") for op in self.operations(actor))

        return min(actors, key=finished)

    def died_uncommitted(self, actor: str) -> bool:
        """The actor's last statement never completed: cut, its backend ended, or a fatal
        error (which reaches the client before the connection's end reaches the proxy)."""
        statements = self.statements.get(actor) or []
        if not statements:
            return False
        last = statements[-1]
        return last.completed_at is None and (last.cut or last.closed or last.error)

    def waited_on_another(self, actor: str) -> bool:
        """The actor's statement was seen waiting on another session's lock."""
        return actor in self.waited

    def describe(self) -> str:
        return "\n".join(self.transcript)

    @property
    def reader_store(self) -> TurnStore:
        if self.reader is None:
            raise RuntimeError("the final state is only readable while the check runs")
        return self.reader
