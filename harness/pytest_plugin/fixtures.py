"""The scenario fixtures: the adapter, a fresh database per test, stores, the database clock.

Stores handed to a scenario are guarded (`TurnproofRun.wrap_store`): it may call only the
operations of the capabilities it requires, so a missing capability is never scored as
the implementation's failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from harness.adapter_loading import assert_store
from harness.contract import Adapter, Clock, TurnStore
from harness.db_clock import DatabaseClock
from harness.postgres.databases import DatabaseFactory, with_params
from harness.pytest_plugin.run import turnproof_run


@pytest.fixture(scope="session")
def adapter(pytestconfig: pytest.Config) -> Adapter:
    """The implementation under test, as chosen by --adapter (time-bounded in process)."""
    return turnproof_run(pytestconfig).adapter()


@pytest.fixture(scope="session")
def _turnproof_databases(pytestconfig: pytest.Config) -> DatabaseFactory:
    """The run's database factory; the pre-flight prepared it before the first scenario."""
    return turnproof_run(pytestconfig).databases()


@pytest.fixture
def turn_dsn(pytestconfig: pytest.Config, _turnproof_databases: DatabaseFactory) -> Iterator[str]:
    """A fresh database with the adapter's schema; dropped after the test (in the
    background, like the next one's clone: see harness.postgres.fresh_databases)."""
    fresh = turnproof_run(pytestconfig).fresh_databases()
    dsn = fresh.take_blocking()
    yield dsn
    fresh.drop_later(dsn)


@pytest.fixture
async def open_store(
    request: pytest.FixtureRequest, adapter: Adapter, turn_dsn: str
) -> AsyncIterator[Callable[..., Awaitable[TurnStore]]]:
    """More replicas on the test's database: `await open_store(clock=..., name=...)`.

    `own_process=True` gives a replica in a process of its own (a `DriverStore`), which
    `await replica.kill()` SIGKILLs like a crash; the scenario needs the `process`
    capability.
    """
    run = turnproof_run(request.config)
    opened: list[TurnStore] = []

    async def open_(
        *, clock: Clock | None = None, name: str = "replica", own_process: bool = False
    ) -> TurnStore:
        dsn = with_params(turn_dsn, application_name=f"turnproof-{name}")
        chosen = run.process_adapter() if own_process else adapter
        store = assert_store(await chosen.connect(dsn, clock=clock), adapter.name)
        opened.append(store)
        return run.wrap_store(store, request.node)

    yield open_
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
async def store(open_store: Callable[..., Awaitable[TurnStore]]) -> TurnStore:
    """One replica connected to the test's database."""
    return await open_store(name="scenario")


@pytest.fixture
async def db_clock(turn_dsn: str) -> AsyncIterator[DatabaseClock]:
    """The database's clock, for waiting on staleness and proving timing premises."""
    clock = await DatabaseClock.connect(with_params(turn_dsn, application_name="turnproof-clock"))
    yield clock
    await clock.aclose()
