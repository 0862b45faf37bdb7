"""The race engine: actors, schedules, blocking detection, histories and transcripts.

Races are made to happen, not hoped for: every actor reaches PostgreSQL
through its own gated proxy listener, and the engine lets exactly one step
through at a time, in the order a schedule names. Scenario authors need only
the names exported here and the `race_engine` fixture.
"""

from harness.race.engine import Exploration, RaceEngine, RaceFailure, round_robin
from harness.race.outcome import RaceOutcome
from harness.race.scenario import Op, Produced, Race, given

__all__ = [
    "Exploration",
    "Op",
    "Produced",
    "Race",
    "RaceEngine",
    "RaceFailure",
    "RaceOutcome",
    "given",
    "round_robin",
]
