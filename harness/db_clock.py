"""The database's clock, read over a control connection.

The contract judges staleness by the database clock only, so scenarios wait
on it and prove their timing premises with it instead of trusting sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import psycopg

from harness.errors import ScenarioPremiseError


class DatabaseClock:
    def __init__(self, connection: psycopg.AsyncConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(cls, dsn: str) -> DatabaseClock:
        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def aclose(self) -> None:
        await self._connection.close()

    async def now(self) -> datetime:
        """The database's wall clock at this instant (not the transaction start)."""
        cursor = await self._connection.execute("SELECT clock_timestamp()")
        row = await cursor.fetchone()
        assert row is not None
        return row[0]

    async def let_pass(self, delta: timedelta) -> datetime:
        """Return once the database clock has moved on by `delta` since the call, with the
        clock's reading then.

        Every row written before the call is then older than `delta` by the
        database's own judgement.
        """
        return await self.sleep_until(await self.now() + delta)

    async def sleep_until(self, deadline: datetime) -> datetime:
        """Return once the database clock reads `deadline` or later, with that reading.

        The server sleeps exactly as long as its own clock says is left (pg_sleep sleeps
        at least that long), and the reading after it proves the wait: one sleep, no
        polling (a second only if the clock were to say the first fell short).
        """
        while (now := await self.now()) < deadline:
            await self._connection.execute(
                "SELECT pg_sleep(extract(epoch FROM %s::timestamptz - clock_timestamp()))",
                (deadline,),
            )
        return now

    @asynccontextmanager
    async def within(self, limit: timedelta) -> AsyncIterator[None]:
        """Prove the block took less than `limit` of database time, or stop the scenario."""
        start = await self.now()
        yield
        took = await self.now() - start
        if took >= limit:
            raise ScenarioPremiseError(
                f"the block had to finish within {limit.total_seconds():g} s of database time "
                f"but took {took.total_seconds():.3f} s (the machine stalled?); "
                "its rows were not fresh any more, so no verdict was drawn; rerun the test"
            )
