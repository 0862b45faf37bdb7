"""Run races, forced: concurrent begins on one chat, and a winner that dies before its
commit while another begin waits on it (its connection cut, its backend terminated, or its
process killed). The races themselves are in scenarios.races."""

from __future__ import annotations

import pytest

from scenarios.races import (
    concurrent_begins,
    dead_winner_does_not_blame_a_conflict,
    fault_after_each_winner_step,
    waiter_wins_over_a_dead_winner,
    winner_dies,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


@pytest.mark.requirement("RUN-1c")
@pytest.mark.parametrize("count", range(2, 9), ids=lambda n: f"{n}-begins")
async def test_concurrent_begins_have_one_winner(race_engine, count):
    """N begins on one chat: one run, N-1 RunAlreadyActive, never two active runs."""
    await race_engine.explore(concurrent_begins(count))


@pytest.mark.requirement("RUN-3a")
@pytest.mark.capability("network")
@pytest.mark.parametrize(
    "fault",
    [
        "cut",
        "terminate",
        pytest.param("kill", marks=pytest.mark.capability("process")),
    ],
    ids=["connection-cut", "backend-terminated", "process-killed"],
)
async def test_waiting_begin_wins_when_the_winner_dies(race_engine, fault):
    """A begin waiting on a winner that dies before commit succeeds instead of failing."""
    race = winner_dies(fault, waiter_wins_over_a_dead_winner)
    await race_engine.explore(race, schedules=fault_after_each_winner_step(fault))


@pytest.mark.requirement("RUN-2b")
@pytest.mark.capability("network")
@pytest.mark.parametrize(
    "fault", ["cut", "terminate"], ids=["connection-cut", "backend-terminated"]
)
async def test_a_dead_winner_is_not_reported_as_a_conflict(race_engine, fault):
    """A begin whose connection dies raises its own error, never RunAlreadyActive."""
    race = winner_dies(fault, dead_winner_does_not_blame_a_conflict)
    await race_engine.explore(race, schedules=fault_after_each_winner_step(fault))
