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

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.contract import STORE_OPERATIONS, TurnStore
from harness.race.errors import InvalidRace

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
        if operation not in STORE_OPERATIONS:
            raise InvalidRace(
                f"Op({operation!r}): no such operation of the contract "
                f"(harness.TurnStore has {', '.join(STORE_OPERATIONS)})"
            )
        parameters = inspect.signature(getattr(TurnStore, operation)).parameters
        unknown = sorted(set(arguments) - set(parameters) - {"self"})
        if unknown:
            accepted = [name for name in parameters if name != "self"]
            raise InvalidRace(
                f"Op({operation!r}): unknown argument(s) {', '.join(unknown)} "
                f"(it takes {', '.join(accepted)})"
            )
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
    Python worker), so schedules may kill it: Kill(NAME), Kill(NAME, after_send=True)."""

    def __post_init__(self) -> None:
        if not self.actors or any(not ops for ops in self.actors.values()):
            raise InvalidRace(f"race {self.name!r}: every actor needs at least one operation")
        for actor, ops in self.actors.items():
            if not actor.replace("-", "").replace("_", "").isalnum():
                raise InvalidRace(f"race {self.name!r}: actor name {actor!r} must be a word")
            if not all(isinstance(op, Op) for op in ops):
                raise InvalidRace(f"race {self.name!r}: actor {actor!r} has a non-Op operation")
