"""How the next actor is chosen at each decision point: forced, depth-first, random, PCT,
or from a list of choice indices (what Hypothesis draws and shrinks).

At every decision point the engine offers the *enabled set*: the actors parked at
their gate (a statement held, or executed and its commit held) that are neither
blocked on a lock nor finished, as CHESS, Loom and Shuttle do. The set is ordered so
that its first member is the non-preemptive choice (the actor that moved last, if it
can move again, else the first in declaration order); choice index 0 always means that
choice, so a schedule made of index 0s has no preemption at all, and shrinking choice
indices towards 0 shrinks a failure towards fewer deviations.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.race.errors import InvalidInterleaving
from harness.race.schedule import Proceed, ScheduleEntry, Step


@dataclass(frozen=True)
class Decision:
    """One decision point: its number (from 0), the enabled actors (index 0 = no
    preemption), and the actors that cannot move now and why."""

    number: int
    enabled: tuple[str, ...]
    blocked: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    at_commit: tuple[str, ...] = ()
    """Enabled actors whose next step is a commit (their statement executed, uncommitted)."""


class Chooser(Protocol):
    """Picks the entry to perform at each decision point of one interleaving."""

    def choose(self, decision: Decision) -> ScheduleEntry: ...


class Forced:
    """A given schedule, then the non-preemptive choice once it is used up. Proceed(actor)
    stands for that actor's steps while it can move. A Step that asks a blocked or
    finished actor to move is an InvalidInterleaving naming the step."""

    def __init__(self, schedule: Sequence[ScheduleEntry]) -> None:
        self.schedule = tuple(schedule)
        self._next = 0

    def choose(self, decision: Decision) -> ScheduleEntry:
        while self._next < len(self.schedule):
            entry = self.schedule[self._next]
            if not isinstance(entry, Proceed):
                break
            if entry.actor in decision.enabled:
                return Step(entry.actor)
            self._next += 1
        if self._next >= len(self.schedule):
            return Step(decision.enabled[0])
        entry = self.schedule[self._next]
        self._next += 1
        if isinstance(entry, Step) and entry.actor not in decision.enabled:
            why = (
                "is blocked on another's lock"
                if entry.actor in decision.blocked
                else ("has finished" if entry.actor in decision.finished else "cannot move")
            )
            raise InvalidInterleaving(
                f"step {decision.number + 1} ({entry.actor}, entry {self._next} of the "
                f"schedule): {entry.actor} "
                f"{why}; the actors that could move were {', '.join(decision.enabled)}"
            )
        return entry


class Indexed:
    """Choice indices, one per decision (enabled[index % len(enabled)]), then index 0:
    the form Hypothesis draws, stores and shrinks, and depth-first search enumerates."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = tuple(indices)

    def choose(self, decision: Decision) -> ScheduleEntry:
        index = self.indices[decision.number] if decision.number < len(self.indices) else 0
        return Step(decision.enabled[index % len(decision.enabled)])


class RandomWalk:
    """A uniformly random enabled actor at every decision (seeded)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, decision: Decision) -> ScheduleEntry:
        return Step(self.rng.choice(decision.enabled))


class PCT:
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010).

    Each actor gets a random distinct priority above `depth`; the highest-priority
    enabled actor moves; at `depth - 1` change points drawn uniformly among the first
    `steps` statements, the actor that just sent that statement drops to priority
    depth-1, depth-2, ... so it is preempted while the statement is executed and
    uncommitted. A bug of depth d (d ordering constraints) is then found by one run
    with probability at least 1 / (n * k^(d-1)) for n actors and k statements.
    """

    def __init__(self, rng: random.Random, actors: Sequence[str], depth: int, steps: int) -> None:
        ranks = list(range(depth, depth + len(actors)))
        rng.shuffle(ranks)
        self.priority = dict(zip(actors, ranks, strict=True))
        self.change_points = {
            point: depth - 1 - n
            for n, point in enumerate(rng.sample(range(max(steps, depth)), depth - 1))
        }
        self.statements = 0

    def choose(self, decision: Decision) -> ScheduleEntry:
        actor = max(decision.enabled, key=self.priority.__getitem__)
        if actor not in decision.at_commit:  # a statement starts: a PCT step
            lowered = self.change_points.get(self.statements)
            if lowered is not None:
                self.priority[actor] = lowered
            self.statements += 1
        return Step(actor)


def pct_bound(actors: int, steps: int, depth: int, runs: int) -> str:
    """PCT's guarantee for n actors and k statements, per run and over `runs`, in words."""
    per_run = 1 / (actors * max(steps, 1) ** (depth - 1))
    overall = 1 - (1 - per_run) ** runs
    return (
        f"PCT depth {depth}: each run finds a depth-{depth} bug with probability >= "
        f"1/({actors}*{steps}^{depth - 1}) = {per_run:.3g}; {runs} runs >= {overall:.1%}"
    )


class ChoiceTree:
    """Every schedule of the choice tree, each run once, fewest deviations first.

    Stateless model checking: every run starts again on a fresh database and replays its
    prefix of choices, then takes the non-preemptive choice (index 0) at every later
    decision. A run's decisions show the alternatives after its prefix; each becomes a
    prefix to run, queued by its number of choices other than index 0: a preemption, or
    picking who goes next when the last mover cannot. That is CHESS's iterative context
    bounding (bugs need few preemptions, so schedules with at most b are all run before
    any with b+1), made stricter for races of symmetric actors, whose orders after a
    finished actor differ in little. Within one bound, the next enabled actor comes
    before the ones after it (symmetric actors make those alike), and preempting an
    actor whose statement is executed and uncommitted comes first: that is where another
    actor can wait on its locks. Run to its end, the search is exhaustive.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[tuple[int, int, bool, int], tuple[int, ...]]] = [
            ((0, 0, False, 0), ())
        ]
        self._pushed = 1
        self._running: tuple[int, tuple[int, ...]] = (0, ())
        self.leaves = 0
        self.bound = 0
        """Every schedule with at most this many deviations has been run or is running."""

    @property
    def exhausted(self) -> bool:
        return not self._queue

    def next_run(self) -> Indexed:
        (deviations, *_), prefix = heapq.heappop(self._queue)
        self.bound = deviations
        self._running = (deviations, prefix)
        return Indexed(prefix)

    def expand(self, decisions: Sequence[Decision]) -> None:
        """Queue the alternatives the last run showed after its prefix."""
        deviations, prefix = self._running
        self.leaves += 1
        for depth in range(len(prefix), len(decisions)):
            decision = decisions[depth]
            uncommitted = decision.enabled[0] in decision.at_commit
            for index in range(1, len(decision.enabled)):
                path = (*prefix, *(0,) * (depth - len(prefix)), index)
                order = (deviations + 1, index, not uncommitted, self._pushed)
                heapq.heappush(self._queue, (order, path))
                self._pushed += 1

    @property
    def covered(self) -> int:
        """Every schedule with at most this many deviations has been run."""
        return self._queue[0][0][0] - 1 if self._queue else self.bound
