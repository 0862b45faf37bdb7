"""A race's interleaving as a timeline: one lane per actor, bars from start to end.

Jepsen's timeline.html is the model: a reader sees which connection held what while
another waited. The timeline is plain data (JSON-ready), so the terminal and the HTML
report draw the same thing, and a merged or archived JSON report can still be drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.race.outcome import RaceOutcome

FAULT_LANE = "faults"

# Bar kinds, in the order a statement lives through them.
OPERATION = "operation"  # a contract operation, from invocation to its answer
HELD = "held"  # a statement held at the gate before it reached PostgreSQL
EXECUTING = "executing"  # reached PostgreSQL; until its commit point
UNCOMMITTED = "uncommitted"  # executed, its commit (Sync) held back: its locks stay held
WAIT = "wait"  # blocked on another session's lock
COMMIT = "commit"  # a point: the statement's commit reached PostgreSQL
FAULT = "fault"  # a point: a cut, a terminated backend, a killed process


@dataclass(frozen=True)
class Bar:
    lane: str
    kind: str
    start: float  # seconds since the timeline's origin
    end: float | None  # None: a point, or never finished
    label: str  # what the bar says
    detail: str = ""  # the whole text (SQL, arguments), never cut
    blocked_by: str = ""  # for WAIT: the sessions it waited on
    outcome: str = ""  # for OPERATION: what came back ("-> True", "raised ...")


@dataclass(frozen=True)
class Timeline:
    race: str
    schedule: tuple[str, ...]
    lanes: tuple[str, ...]
    bars: tuple[Bar, ...]
    finding: str = ""  # what the check found (empty when it passed)
    rerun: str = ""

    @property
    def duration(self) -> float:
        ends = [b.end if b.end is not None else b.start for b in self.bars]
        return max(ends, default=0.0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schedule"] = list(self.schedule)
        data["lanes"] = list(self.lanes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        return cls(
            race=data["race"],
            schedule=tuple(data["schedule"]),
            lanes=tuple(data["lanes"]),
            bars=tuple(Bar(**bar) for bar in data["bars"]),
            finding=data.get("finding", ""),
            rerun=data.get("rerun", ""),
        )


def timeline_of(outcome: RaceOutcome, *, finding: str = "", rerun: str = "") -> Timeline:
    """Draw one interleaving from what the engine observed: operations from the history,
    statements from the gate's timestamps, lock waits and faults from the engine's record."""
    raw: list[Bar] = []
    for record in outcome.history.operations:
        raw.append(
            Bar(
                record.actor,
                OPERATION,
                record.invoked_at,
                record.completed_at,
                record.operation,
                _call(record),
                outcome=_answer(record),
            )
        )
    for actor, statements in outcome.statements.items():
        for s in statements:
            text = " ".join(s.text.split())
            reached = s.forwarded_at
            if reached is not None and reached > s.received_at:
                raw.append(Bar(actor, HELD, s.received_at, reached, "held at the gate", text))
            if reached is None:
                continue
            commit = s.sent_at if s.sent_at is not None and s.sent_at > reached else None
            if commit is not None and s.executes:
                raw.append(Bar(actor, UNCOMMITTED, reached, commit, _verb(text), text))
                raw.append(Bar(actor, COMMIT, commit, None, "commit", text))
            else:
                raw.append(Bar(actor, EXECUTING, reached, s.completed_at, _verb(text), text))
    for wait in outcome.waits:
        blockers = ", ".join(wait.blockers)
        reached = [
            s.forwarded_at
            for s in outcome.statements.get(wait.actor, [])
            if s.forwarded_at is not None and s.forwarded_at >= wait.started_at
        ]
        started = min(reached, default=wait.started_at)  # it waits once it reached the server
        raw.append(
            Bar(
                wait.actor,
                WAIT,
                started,
                wait.ended_at,
                f"waits on {blockers}",
                blocked_by=blockers,
            )
        )
    for fault in outcome.faults:
        raw.append(Bar(FAULT_LANE, FAULT, fault.at, None, fault.kind, fault.description))
    origin = min((bar.start for bar in raw), default=0.0)
    bars = tuple(
        replace(bar, start=bar.start - origin, end=None if bar.end is None else bar.end - origin)
        for bar in sorted(raw, key=lambda bar: bar.start)
    )
    actors = outcome.statements or {r.actor: None for r in outcome.history.operations}
    lanes = tuple(actors)
    if any(bar.lane == FAULT_LANE for bar in bars):
        lanes += (FAULT_LANE,)
    return Timeline(
        race=outcome.race,
        schedule=tuple(str(entry) for entry in outcome.schedule),
        lanes=lanes,
        bars=bars,
        finding=finding,
        rerun=rerun,
    )


def _call(record: Any) -> str:
    """The operation with all its arguments, uncut."""
    arguments = ", ".join(f"{name}={value!r}" for name, value in record.arguments.items())
    return f"{record.operation}({arguments})"


def _answer(record: Any) -> str:
    if record.outcome == "ok":
        return f"-> {record.result!r}"
    if record.outcome in ("fail", "unknown"):
        return f"raised {type(record.error).__name__}: {record.error} [{record.outcome}]"
    return "never returned"


def _verb(sql: str) -> str:
    """The statement's first words, as a bar's label (the bar's detail has all of it)."""
    words = sql.split()
    return " ".join(words[:3]) if words else "(empty statement)"
