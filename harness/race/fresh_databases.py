"""Fresh databases one step ahead of the race engine.

Every interleaving runs on a fresh clone of the template, and cloning and dropping
are the server's work (~20 ms and ~10 ms here), so they need not keep the engine
waiting: one worker thread clones the next database and drops the last one while an
interleaving runs. All calls on the DatabaseFactory go through that one thread, so
they never overlap; a pending clone or drop always runs to its end (nothing is left
half-made on Ctrl-C), and whatever the engine did not close is dropped with the
factory at the end of the run.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

from harness.postgres.databases import DatabaseFactory


class FreshDatabases:
    """Clones taken one at a time, the next one prepared in the background."""

    def __init__(self, factory: DatabaseFactory) -> None:
        self._factory = factory
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnproof-clone")
        self._next: Future[str] | None = None

    async def take(self) -> str:
        """A fresh database's DSN; the one after it starts cloning at once."""
        future = self._next or self._worker.submit(self._factory.create)
        self._next = None
        dsn = await asyncio.wrap_future(future)
        self._next = self._worker.submit(self._factory.create)
        return dsn

    def drop_later(self, dsn: str) -> None:
        """Drop the database in the background (nobody may be connected to it any more)."""
        self._worker.submit(self._factory.drop, dsn)

    async def aclose(self) -> None:
        """Drop the clone prepared for nothing, and wait for every pending drop."""
        if self._next is not None:
            dsn = await asyncio.wrap_future(self._next)
            self._next = None
            self.drop_later(dsn)
        done: Future[None] = self._worker.submit(lambda: None)
        await asyncio.wrap_future(done)
        self._worker.shutdown()
