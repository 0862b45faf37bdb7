"""What exploring a race covered and what it cost: the figures a run prints per race
(schedules explored, the search's bound or its PCT guarantee, wall time) and where
an interleaving's time goes (the race benchmark prints those)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.race.outcome import RaceOutcome
from harness.race.schedule import Schedule


@dataclass
class Exploration:
    """What exploring a race covered: counts and figures, for the report and vacuity."""

    race: str
    level: str
    mode: str
    run: int = 0
    invalid: int = 0
    produced: int = 0
    exhausted: bool = False
    systematic: int = 0
    """How many of the runs were the choice tree's (the rest were sampled)."""
    preemptions: int = 0
    """Every schedule with at most this many non-default choices was run."""
    seed: int | None = None
    bound: str = ""
    seconds: float = 0.0
    schedules: list[Schedule] = field(default_factory=list)
    last: RaceOutcome | None = None
    """The last interleaving run (the reports draw a passing race's timeline from it)."""
    seen: set[str] = field(default_factory=set)
    """The descriptions of what the race produced, over every interleaving run."""

    def summary(self) -> str:
        tree = (
            f"all {self.systematic} {self.level}-level schedules (tree exhausted)"
            if self.exhausted
            else f"{self.systematic} {self.level}-level schedules of the choice tree, all those "
            f"with at most {self.preemptions} choice(s) other than the non-preemptive one"
        )
        what = {
            "exhaustive": tree,
            "pct": f"{tree}; then {self.run - self.systematic} PCT schedules, seed {self.seed} "
            f"({self.bound})",
            "random": f"{tree}; then {self.run - self.systematic} random walks, seed {self.seed}",
            "hypothesis": f"{self.run} {self.level}-level schedules drawn by Hypothesis",
            "forced": f"{self.run} forced {self.level}-level schedule(s)",
            "given": f"{self.run} given {self.level}-level schedules ({self.invalid} impossible)",
        }[self.mode]
        return f"{self.race}: {what}; the race produced in {self.produced}; {self.seconds:.1f} s"


class Phases:
    """Where an interleaving's time goes (clone, connects, set-up, schedule, check), summed
    over the engine's runs: the race benchmark prints it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed
