"""The database's clock, read over a control connection.

The contract judges staleness by the database clock only, so scenarios wait
on it and prove their timing premises with it instead of trusting sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import anyio
import psycopg

from harness.errors import ScenarioPremiseError

_POLL_SECONDS = 0.02


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

    async def let_pass(self, delta: timedelta) -> None:
        """Return once the database clock has moved on by `delta` since the call.

        Every row written before the call is then older than `delta` by the
        database's own judgement; the sleep only bounds each poll.
        """
        deadline = await self.now() + delta
        while (now := await self.now()) < deadline:  # noqa: ASYNC110 (polling another process)
            await anyio.sleep(min(_POLL_SECONDS, (deadline - now).total_seconds()))

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
