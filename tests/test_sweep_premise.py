"""The staleness premises of the sweep scenarios (scenarios/support.py), on a real clock:
a threshold chosen inside the gap, a sweep that outlasts the gap tried again with a wider
one, no verdict once every attempt stalled; and the database clock's exact wait."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from harness.db_clock import DatabaseClock
from harness.errors import ScenarioPremiseError
from scenarios.support import (
    GAP_ATTEMPTS,
    STALE_ONLY,
    SWEEP_GAP,
    RacePremiseError,
    SweepPremise,
    race_premise,
    sweep_premise,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def clock(postgres_server):
    clock = await DatabaseClock.connect(postgres_server.admin_dsn)
    yield clock
    await clock.aclose()


async def test_sleep_until_returns_a_reading_at_or_after_the_deadline(clock):
    deadline = await clock.now() + timedelta(milliseconds=30)
    reached = await clock.sleep_until(deadline)
    assert reached >= deadline
    assert await clock.now() >= reached


async def test_let_pass_moves_the_database_clock_on_by_delta(clock):
    before = await clock.now()
    after = await clock.let_pass(STALE_ONLY)
    assert after - before >= STALE_ONLY


class Sweeper:
    """A sweep that records when it ran (database clock) with which threshold, and stalls
    past the gap while `stalls` > 0 (as a loaded machine would) by holding the database
    clock for the threshold it was given."""

    def __init__(self, clock: DatabaseClock, stalls: int) -> None:
        self.clock = clock
        self.stalls = stalls
        self.calls: list[tuple[datetime, timedelta]] = []

    async def __call__(self, *, older_than: timedelta) -> int:
        self.calls.append((await self.clock.now(), older_than))
        if self.stalls and older_than != STALE_ONLY:
            self.stalls -= 1
            await self.clock.let_pass(older_than)
        return len(self.calls)


async def test_the_threshold_lies_between_the_stale_rows_and_the_fresh_ones(clock):
    sweeper = Sweeper(clock, stalls=0)
    marks: dict[str, datetime] = {}

    async def attempt(premise: SweepPremise) -> int:
        marks["stale"] = await clock.now()  # the newest stale row was written before this
        await premise.pass_gap()
        marks["fresh"] = await clock.now()  # the fresh rows are written after this
        return await premise.sweep(sweeper)

    await sweep_premise(clock, attempt, settle=[sweeper])

    swept_at, older_than = sweeper.calls[-1]
    assert swept_at - older_than > marks["stale"], "a stale row would be spared"
    assert swept_at - older_than < marks["fresh"], "a fresh row would be swept"
    assert older_than >= SWEEP_GAP - timedelta(milliseconds=1)


async def test_a_sweep_that_outlasts_the_gap_is_tried_again_with_a_wider_gap(clock):
    sweeper = Sweeper(clock, stalls=1)
    gaps: list[timedelta] = []

    async def attempt(premise: SweepPremise) -> int:
        gaps.append(premise.gap)
        await premise.pass_gap()
        return await premise.sweep(sweeper)

    result = await sweep_premise(clock, attempt, settle=[sweeper])

    assert gaps[0] == SWEEP_GAP
    assert len(gaps) >= 2, gaps
    assert gaps[1] >= 2 * SWEEP_GAP, gaps
    assert sweeper.calls[1][1] == STALE_ONLY, "the stalled attempt's rows were not settled"
    assert result == len(sweeper.calls), "the result is not the last attempt's"


async def test_no_verdict_once_every_attempt_stalled(clock):
    sweeper = Sweeper(clock, stalls=GAP_ATTEMPTS)

    async def attempt(premise: SweepPremise) -> int:
        await premise.pass_gap()
        return await premise.sweep(sweeper)

    with pytest.raises(ScenarioPremiseError, match="stalled through every attempt") as raised:
        await sweep_premise(clock, attempt, settle=[sweeper])
    assert str(raised.value).count(" s gap: ") == GAP_ATTEMPTS


async def test_a_premise_the_attempt_states_is_retried_too(clock):
    held: list[bool] = []

    async def attempt(premise: SweepPremise) -> None:
        premise.require(bool(held), "the first attempt's premise")
        held.append(True)

    await sweep_premise(clock, attempt, settle=[])
    assert held == [True, True]


def test_an_interleaving_past_the_race_threshold_gives_no_verdict_and_the_gap_it_needed():
    fresh_since = datetime(2026, 1, 1)
    context = {"fresh_since": fresh_since, "older_than": timedelta(milliseconds=250)}
    just = fresh_since + timedelta(milliseconds=249)
    in_time = SimpleNamespace(finished_at=just, context=context)
    race_premise(in_time)  # type: ignore[arg-type]
    late = SimpleNamespace(finished_at=fresh_since + timedelta(milliseconds=400), context=context)
    with pytest.raises(RacePremiseError) as raised:
        race_premise(late)  # type: ignore[arg-type]
    assert raised.value.needed == timedelta(milliseconds=400)
