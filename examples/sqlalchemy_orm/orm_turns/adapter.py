"""OrmAdapter: how turnproof installs the schema and opens a replica (an engine and its pool).

The DSN turnproof hands over is a libpq connection string whose application_name names
the replica; the harness finds a replica's connections by it (to cut them, or to see
that one waits on a lock). `async_creator` opens every pooled connection with that DSN
exactly as given, so no connection of the pool loses it.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from harness.contract import Clock

from .models import Base
from .store import OrmTurnStore


def engine_for(dsn: str) -> AsyncEngine:
    async def connect() -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(dsn)

    return create_async_engine("postgresql+psycopg://", async_creator=connect, pool_size=5)


class OrmAdapter:
    name = "sqlalchemy-orm"
    capabilities = frozenset(
        {"turns", "streaming", "usage", "sweep", "runs", "workspaces", "network", "process"}
    )

    async def install(self, dsn: str) -> None:
        """CREATE TABLE / INDEX IF NOT EXISTS, in one transaction: running it again changes
        nothing."""
        engine = engine_for(dsn)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        finally:
            await engine.dispose()

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> OrmTurnStore:
        """One replica. `clock` is handed to the store, which decides nothing by it."""
        return OrmTurnStore(engine_for(dsn), clock=clock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


adapter = OrmAdapter()
