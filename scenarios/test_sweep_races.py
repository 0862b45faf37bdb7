"""Sweep races, forced: a replica's startup sweep against another replica's live turn,
a sweep against a step on the same stale row, and a finalize against a sweep.

Staleness comes from the database clock: each setup lets a gap pass on it (RACE_GAP, or
STALE_ONLY where no row must stay fresh), and the premise that a row is still fresh when
the sweep runs is proved, not assumed; an interleaving a stalled machine slowed past it is
explored again with a wider gap. The races themselves are in scenarios.races."""

from __future__ import annotations

import pytest

from scenarios.races import FINALIZE_VS_SWEEP, startup_sweep, sweep_vs_step
from scenarios.support import explore_stale

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns", "streaming")]


@pytest.mark.requirement("SWP-1a", "SWP-1b", "SWP-2a")
async def test_startup_sweep_spares_a_live_turn_of_another_replica(race_engine):
    """One replica streams while another starts up and sweeps: only the stale row is aborted."""
    await explore_stale(race_engine, startup_sweep)


@pytest.mark.requirement("SWP-4a", "SWP-4b", "SWP-4c")
async def test_sweep_and_step_on_one_row_end_in_one_of_two_states(race_engine):
    """Sweep vs step on a stale row: fresh and streaming with the step, or aborted without."""
    await explore_stale(race_engine, sweep_vs_step)


@pytest.mark.requirement("MSG-6b")
@pytest.mark.capability("sweep")
async def test_finalize_wins_over_a_concurrent_sweep(race_engine):
    """Whatever the order, the finalized content and status stand, also over 'aborted'."""
    await race_engine.explore(FINALIZE_VS_SWEEP)
