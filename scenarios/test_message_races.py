"""Message races, forced: a late step against a finalize, duplicate turn writes, two
finalizes writing usage. Every interleaving runs on a fresh database; each race states
what it must have produced, so a run in which the race never happened is no pass.
The races themselves are in scenarios.races."""

from __future__ import annotations

import pytest

from scenarios.races import LATE_STEP, USAGE_RACE, duplicate_turn_race

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]

WRITERS = pytest.mark.parametrize("writers", [2, 4, 8], ids=lambda n: f"{n}-writers")


@pytest.mark.requirement("MSG-4c")
async def test_late_step_never_clobbers_a_finalized_row(race_engine):
    """In every interleaving with a finalize, a step update leaves the finalized row as it is."""
    await race_engine.explore(LATE_STEP)


@pytest.mark.requirement("MSG-1a", "MSG-1b", "MSG-1c")
@WRITERS
async def test_concurrent_user_turns_leave_one_row(race_engine, writers):
    """Concurrent persist_user_turn calls of one turn: one row, one id, no error."""
    await race_engine.explore(duplicate_turn_race("persist_user_turn", "user", writers))


@pytest.mark.requirement("MSG-3a", "MSG-3b", "MSG-3c")
@WRITERS
async def test_concurrent_assistant_shells_leave_one_row(race_engine, writers):
    """Concurrent persist_assistant_shell calls of one turn: one row, one id (streaming,
    where the adapter tracks statuses)."""
    await race_engine.explore(duplicate_turn_race("persist_assistant_shell", "assistant", writers))


@pytest.mark.requirement("USG-1b")
async def test_concurrent_finalizes_keep_the_first_committed_usage(race_engine):
    """Two writers of usage for one message: one row, the first committed, no error."""
    await race_engine.explore(USAGE_RACE)
