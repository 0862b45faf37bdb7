"""ReferenceAdapter: how the harness installs and connects the reference store."""

from __future__ import annotations

from harness.contract import Clock
from reference_impl.store import PgTurnStore


class ReferenceAdapter:
    """The reference implementation: every core capability, over TCP, runnable in a child,
    with a streaming writer.

    `store_class` is the one seam the deliberately broken variants (reference_impl.broken)
    replace; the reference itself never changes it.
    """

    capabilities: frozenset[str] = frozenset(
        {
            "turns",
            "streaming",
            "usage",
            "sweep",
            "runs",
            "workspaces",
            "network",
            "process",
            "coalescing",
        }
    )

    def __init__(
        self, *, name: str = "reference", store_class: type[PgTurnStore] = PgTurnStore
    ) -> None:
        self.name = name
        self.store_class = store_class

    async def install(self, dsn: str) -> None:
        # Imported here: SQLAlchemy builds the DDL, and a store process (one per writer
        # the kill scenarios start) never installs, so it need not import it.
        from reference_impl import schema

        await schema.install(dsn)

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> PgTurnStore:
        return await self.store_class.open(dsn, clock=clock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
