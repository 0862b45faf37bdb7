"""Schedules as values: which actor moves next, or which fault hits whom.

    (Step("winner"), Proceed("waiter"), Cut("winner"), Kill("writer", after_send=True))

Strings exist only at the command line and in rerun lines: `parse_schedule` and
`format_schedule` are the one boundary ("finalize,step,proceed:waiter,cut:writer,kill:writer").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from harness.race.errors import InvalidSchedule


@dataclass(frozen=True)
class Step:
    """Let the actor pass its next hold point: its held statement reaches PostgreSQL, or its
    executed statement's commit (Sync) does; at operation level, its next operation runs."""

    actor: str

    def __str__(self) -> str:
        return self.actor


@dataclass(frozen=True)
class Proceed:
    """Let the actor take steps for as long as it can move: until it waits on another's
    lock or has finished (the isolation tester's way to reach a lock wait)."""

    actor: str

    def __str__(self) -> str:
        return f"proceed:{self.actor}"


@dataclass(frozen=True)
class Cut:
    """Cut the actor's connections at its proxy (RST both ways), wherever it is."""

    actor: str

    def __str__(self) -> str:
        return f"cut:{self.actor}"


@dataclass(frozen=True)
class Terminate:
    """End the actor's backends in PostgreSQL (pg_terminate_backend)."""

    actor: str

    def __str__(self) -> str:
        return f"terminate:{self.actor}"


@dataclass(frozen=True)
class Kill:
    """SIGKILL the actor's process; with after_send, its held statement or commit reaches
    PostgreSQL first and the process dies before the answer comes back."""

    actor: str
    after_send: bool = False

    def __str__(self) -> str:
        return f"{'kill-after-send' if self.after_send else 'kill'}:{self.actor}"


ScheduleEntry = Step | Proceed | Cut | Terminate | Kill
Schedule = tuple[ScheduleEntry, ...]

_FAULTS = {
    "proceed": Proceed,
    "cut": Cut,
    "terminate": Terminate,
    "kill": Kill,
    "kill-after-send": lambda actor: Kill(actor, after_send=True),
}


def parse_schedule(text: str) -> Schedule:
    """'a,b,cut:a' -> (Step('a'), Step('b'), Cut('a')); InvalidSchedule names a bad entry."""
    entries: list[ScheduleEntry] = []
    for number, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        fault, _, actor = item.rpartition(":")
        if not actor or (fault and fault not in _FAULTS):
            raise InvalidSchedule(
                f"schedule entry {number} {item!r} is not an actor name or FAULT:ACTOR "
                f"(kinds: {', '.join(_FAULTS)}); e.g. --race-schedule 'finalize,step,cut:step'"
            )
        entries.append(_FAULTS[fault](actor) if fault else Step(actor))
    return tuple(entries)


def format_schedule(schedule: Sequence[ScheduleEntry]) -> str:
    return ",".join(str(entry) for entry in schedule)


def schedule_problem(
    schedule: Sequence[ScheduleEntry], actors: Collection[str], *, processes: bool
) -> str | None:
    """Why the schedule cannot fit a race with these actors, or None when it can."""
    for number, entry in enumerate(schedule, start=1):
        if entry.actor not in actors:
            return (
                f"entry {number} ({entry}) names no actor of the race "
                f"(its actors: {', '.join(sorted(actors))})"
            )
        if isinstance(entry, Kill) and not processes:
            return (
                f"entry {number} ({entry}) kills a process, and the race's actors run in this "
                "process (set Race(processes=True))"
            )
    return None
