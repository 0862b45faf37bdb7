"""How a race is written down: a setup, actors with their operations, the race it must
produce, and the check every interleaving must pass.

    Race(
        name="late step vs finalize",
        setup=streaming_message,            # (store, db_clock) -> context, once per interleaving
        actors={
            "finalize": [Op("finalize", message_id=given("message_id"), ...)],
            "step": [Op("append_step", message_id=given("message_id"), ...)],
        },
        produced=(Produced("the step reached the database after the finalize committed",
                           lambda o: o.reached_after("step", "finalize")),),
        check=final_row_is_finalized,       # async (outcome) -> None, raises AssertionError
    )

Everything is written against the adapter interface: the engine decides when each
actor's statements reach PostgreSQL, never the scenario.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.contract import TurnStore

if TYPE_CHECKING:
    from harness.db_clock import DatabaseClock
    from harness.race.outcome import RaceOutcome

Context = dict[str, Any]


@dataclass(frozen=True)
class given:
    """A value the setup returned, filled into an operation's arguments per interleaving."""

    key: str

    def resolve(self, context: Context) -> Any:
        try:
            return context[self.key]
        except KeyError:
            raise KeyError(
                f"setup returned no {self.key!r} (it returned {sorted(context)})"
            ) from None


@dataclass(frozen=True)
class Op:
    """One contract operation an actor performs, e.g. Op("append_step", message_id=...)."""

    operation: str
    arguments: Mapping[str, Any]

    def __init__(self, operation: str, **arguments: Any) -> None:
        object.__setattr__(self, "operation", operation)
        object.__setattr__(self, "arguments", arguments)

    def resolve(self, context: Context) -> dict[str, Any]:
        return {
            name: value.resolve(context) if isinstance(value, given) else value
            for name, value in self.arguments.items()
        }

    async def perform(self, store: TurnStore, context: Context) -> Any:
        return await getattr(store, self.operation)(**self.resolve(context))


@dataclass(frozen=True)
class Produced:
    """The race a scenario exists to force, stated as something observable.

    An interleaving that does not produce it proves nothing about the race; the
    engine reports a scenario in which no interleaving produced it as a harness
    error, never as a pass.
    """

    description: str
    happened: Callable[[RaceOutcome], bool]
    statement_level_only: bool = False
    """Only statement-level scheduling can produce it (a lock wait inside one operation)."""


Setup = Callable[[TurnStore, "DatabaseClock"], Awaitable[Context]]
Check = Callable[["RaceOutcome"], Awaitable[None]]


@dataclass(frozen=True)
class Race:
    name: str
    setup: Setup
    actors: Mapping[str, list[Op]]
    produced: tuple[Produced, ...]
    check: Check
    notes: tuple[str, ...] = field(default=())
    processes: bool = False
    """Each actor's store lives in a process of its own (the adapter's driver, or the
    Python worker), so schedules may kill it: "kill:NAME", "kill-after-send:NAME"."""

    def __post_init__(self) -> None:
        if not self.actors or any(not ops for ops in self.actors.values()):
            raise ValueError(f"race {self.name!r}: every actor needs at least one operation")
        for actor in self.actors:
            if not actor.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"race {self.name!r}: actor name {actor!r} must be a word")
