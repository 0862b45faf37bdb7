"""An example in-process adapter on asyncpg: `--adapter examples.asyncpg_store:adapter`.

`examples.asyncpg_store:read_then_write_step` is its deliberately broken variant.
"""

from __future__ import annotations

from harness.contract import Clock
from reference_impl import schema

from .store import AsyncpgTurnStore, ReadThenWriteStep


class AsyncpgAdapter:
    """Installs the reference schema; each connect opens a store with its own pool."""

    capabilities: frozenset[str] = frozenset(
        {"turns", "streaming", "usage", "sweep", "runs", "workspaces", "network", "process"}
    )

    def __init__(self, name: str, store_class: type[AsyncpgTurnStore]) -> None:
        self.name = name
        self.store_class = store_class

    async def install(self, dsn: str) -> None:
        await schema.install(dsn)  # the schema is the reference's: only the client differs

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> AsyncpgTurnStore:
        return await self.store_class.open(dsn, clock=clock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


adapter = AsyncpgAdapter("asyncpg-example", AsyncpgTurnStore)
read_then_write_step = AsyncpgAdapter("asyncpg-example-broken-read-then-write", ReadThenWriteStep)
