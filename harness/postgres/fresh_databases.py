"""Fresh databases one step ahead of whoever takes them.

Every scenario, and every interleaving of a race, runs on a fresh clone of the template.
Cloning and dropping are the server's work (~10 ms each here, plus the wait for the last
backends of the closed connections to exit), so they need not keep anyone waiting: one
worker thread clones the next database while the current one is in use, and drops the
used one. All calls on the DatabaseFactory go through that one thread, so they never
overlap; a pending clone or drop always runs to its end (nothing is left half-made on
Ctrl-C), and whatever was not dropped is dropped with the factory at the end of the run.
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
        return await asyncio.wrap_future(self._take())

    def take_blocking(self) -> str:
        """`take` for synchronous callers (pytest fixtures)."""
        return self._take().result()

    def _take(self) -> Future[str]:
        future = self._next or self._worker.submit(self._factory.create)
        self._next = self._worker.submit(self._factory.create)
        return future

    def drop_later(self, dsn: str) -> None:
        """Drop the database in the background, once its last backends exited."""
        self._worker.submit(self._factory.drop, dsn)

    def settle(self) -> None:
        """Until every clone and drop asked for so far is done (before the server stops)."""
        self._worker.submit(lambda: None).result()

    async def aclose(self) -> None:
        """Drop the clone prepared for nothing, and wait for every pending drop."""
        await asyncio.wrap_future(self._worker.submit(self._close))
        self._worker.shutdown()

    def close(self) -> None:
        """`aclose` for synchronous callers."""
        self._worker.submit(self._close).result()
        self._worker.shutdown()

    def _close(self) -> None:
        """On the worker, after everything submitted before: drop the spare clone."""
        if self._next is not None:
            spare, self._next = self._next, None
            if spare.exception() is None:
                self._factory.drop(spare.result())
