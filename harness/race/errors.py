"""The race engine's exceptions, each in its place in the harness.errors tree.

A malformed race or schedule is the user's to fix (UsageError, exit 2); an
interleaving the engine cannot perform is a harness error (no verdict); a race
whose check failed is the implementation's failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import HarnessError, ImplementationFailure, UsageError

if TYPE_CHECKING:
    from harness.race.outcome import RaceOutcome


class InvalidRace(UsageError):
    """A Race definition names an unknown operation, argument or actor, or a forced schedule
    that cannot fit it: rejected when the Race is built, like Hypothesis's InvalidDefinition."""


class InvalidSchedule(UsageError):
    """A schedule string (--race-schedule, a rerun line) that does not parse."""


class InvalidInterleaving(HarnessError):
    """A forced schedule asks an actor that is blocked on a lock, or finished, to move: no
    real execution has that order."""


class RaceFailure(ImplementationFailure):
    """An interleaving broke the scenario's check; carries the outcome (schedule, transcript)."""

    def __init__(self, message: str, outcome: RaceOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome
