"""The race engine: actors, schedules, exploration, blocking detection, histories.

Races are made to happen, not hoped for: every actor reaches PostgreSQL
through its own gated proxy listener, and the engine lets exactly one step
through at a time, chosen among the actors that can move. Scenario authors need
only the names exported here and the `race_engine` fixture.
"""

from harness.race.engine import Exploration, RaceEngine
from harness.race.errors import InvalidInterleaving, InvalidRace, InvalidSchedule, RaceFailure
from harness.race.outcome import RaceOutcome
from harness.race.scenario import Op, Produced, Race, given
from harness.race.schedule import Cut, Kill, Proceed, Schedule, Step, Terminate, parse_schedule

__all__ = [
    "Cut",
    "Exploration",
    "InvalidInterleaving",
    "InvalidRace",
    "InvalidSchedule",
    "Kill",
    "Op",
    "Proceed",
    "Produced",
    "Race",
    "RaceEngine",
    "RaceFailure",
    "RaceOutcome",
    "Schedule",
    "Step",
    "Terminate",
    "given",
    "parse_schedule",
]
