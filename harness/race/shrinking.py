"""Hypothesis as the race engine's search and shrink engine.

A schedule is a list of choice indices, one per decision point (see
harness.race.strategies): Hypothesis draws such lists, and shrinks a failing one
towards fewer and smaller indices, that is towards fewer preemptions and the shortest
schedule that still fails. Failures found by the engine's PCT or random walks are
handed to Hypothesis through its example database, so they are shrunk the same way,
stored, and replayed first on the next run; a failure of the choice tree has the
fewest deviations already and is only stored.

Race scenarios are async tests running on an event loop, and a Hypothesis test is
synchronous: Hypothesis runs in a worker thread and each example runs back on the
loop (anyio.from_thread.run). The current Hypothesis profile is honoured
(max_examples, derandomize, database); deadlines and health checks are off, since one
example is a whole interleaving on a fresh database.
"""

from __future__ import annotations

import contextlib
import hashlib
import unittest
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.from_thread
import anyio.to_thread
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase, choices_to_bytes

MAX_INDEX = 15
"""Choice indices are taken modulo the enabled set's size, so this bounds nothing real."""
MAX_DECISIONS = 1024

Choices = tuple[int, ...]
Attempt = Callable[[tuple[int, ...]], Awaitable[bool]]
"""Runs one interleaving under these choice indices; True when its check failed."""


class _StillFails(Exception):
    """Raised inside the Hypothesis test so Hypothesis keeps (and shrinks) the example."""


class HypothesisSearch:
    """Search, replay and shrink the choice indices of one race (one database key)."""

    def __init__(self, identity: str, attempt: Attempt) -> None:
        self.key = hashlib.sha256(f"turnproof race {identity}".encode()).digest()
        self._attempt = attempt
        self.examples = 0

    async def replay_stored(self) -> tuple[int, ...] | None:
        """The smallest failing schedule stored by an earlier run, if it still fails (stored
        schedules were shrunk, or had the fewest deviations, when they were stored)."""
        return await self._run([Phase.reuse], seed=None)

    def store(self, failing: Sequence[int]) -> None:
        """Keep a failing schedule that needs no shrinking, to be replayed first next time."""
        database = settings.default.database
        if database is not None:
            database.save(self.key, choices_to_bytes(_as_list_choices(_trimmed(failing))))

    async def shrink(self, failing: Sequence[int]) -> tuple[int, ...]:
        """The smallest failing choice list Hypothesis finds from `failing`."""
        found = await self._run([Phase.reuse, Phase.shrink], seed=_trimmed(failing))
        return found if found is not None else tuple(failing)

    async def search(self) -> tuple[int, ...] | None:
        """Hypothesis's own generation (max_examples of the profile), shrunk if it fails."""
        return await self._run([Phase.reuse, Phase.generate, Phase.shrink], seed=None)

    async def _run(
        self, phases: list[Phase], seed: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        return await anyio.to_thread.run_sync(self._in_thread, phases, seed)

    def _in_thread(
        self, phases: list[Phase], seed: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        database = settings.default.database or InMemoryExampleDatabase()
        if seed is not None:  # the secondary corpus is replayed and shrunk, unlike the primary
            database.save(self.key + b".secondary", choices_to_bytes(_as_list_choices(seed)))
        failing: list[tuple[int, ...]] = []
        errors: list[BaseException] = []

        @settings(
            database=database,
            phases=phases,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            verbosity=Verbosity.quiet,
        )
        @given(st.lists(st.integers(0, MAX_INDEX), max_size=MAX_DECISIONS))
        def attempt(indices: list[int]) -> None:
            if errors:
                return
            self.examples += 1
            try:
                failed = anyio.from_thread.run(self._attempt, tuple(indices))
            except Exception as exc:  # the harness's own trouble: stop, report it as it is
                errors.append(exc)
                return
            if failed:
                failing.append(tuple(indices))
                raise _StillFails

        attempt._hypothesis_internal_database_key = self.key  # type: ignore[attr-defined]
        with contextlib.suppress(_StillFails, unittest.SkipTest):  # Skip: nothing to replay
            attempt()
        if errors:
            raise errors[0]
        return failing[-1] if failing else None  # Hypothesis replays the minimal one last


def _as_list_choices(indices: Sequence[int]) -> tuple[bool | int, ...]:
    """How st.lists records its choices: a 'more' boolean before each element, then False."""
    choices: list[bool | int] = []
    for index in indices[:MAX_DECISIONS]:
        choices += [True, min(index, MAX_INDEX)]
    return (*choices, False)


def _trimmed(indices: Sequence[int]) -> tuple[int, ...]:
    """Without trailing 0s: every decision after the list takes index 0 anyway, and a
    shorter list leaves Hypothesis's shrinker less to try."""
    end = len(indices)
    while end and not indices[end - 1]:
        end -= 1
    return tuple(indices[:end])
