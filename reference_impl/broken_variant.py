"""What a deliberately broken variant declares: the clauses it breaks and the channel
through which the suite catches it.

A variant is declared once, beside its code (`reference_impl.broken`,
`reference_impl.broken_writer`); `tests/test_broken_variants.py` and `turnproof
requirements` find the declarations here, so no table of variants is kept by hand.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Literal, get_args

import psycopg
from psycopg import sql

from reference_impl import schema
from reference_impl.adapter import ReferenceAdapter
from reference_impl.store import PgTurnStore

Channel = Literal["sequential", "race", "kill", "restart", "network", "skew"]
"""How the bug shows: in any plain scenario, only under a forced race, a killed writer, a
crashed server, a network fault, or a skewed replica clock."""

CHANNELS: tuple[str, ...] = get_args(Channel)

VARIANT_MODULES: tuple[str, ...] = ("reference_impl.broken", "reference_impl.broken_writer")


class BrokenVariant(ReferenceAdapter):
    """The reference with one bug: its store class replaced, and maybe one index left out
    of the schema because the bug needs it gone."""

    def __init__(
        self,
        store_class: type[PgTurnStore],
        *,
        breaks: tuple[str, ...],
        channel: Channel,
        without_index: str | None = None,
        name: str | None = None,
    ) -> None:
        if not breaks or channel not in CHANNELS:
            raise ValueError(f"{store_class.__name__}: declare breaks=(...) and a channel")
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", store_class.__name__).lower()
        super().__init__(name=name or f"broken-{kebab}", store_class=store_class)
        self.breaks = breaks
        self.channel = channel
        self.without_index = without_index

    async def install(self, dsn: str) -> None:
        if self.without_index is None:
            await super().install(dsn)
            return
        async with await psycopg.AsyncConnection.connect(dsn) as conn:  # commits on exit
            for statement in schema.ddl():
                if self.without_index not in statement:
                    await conn.execute(statement)
            await conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.without_index))
            )


def declared_variants() -> Iterator[tuple[str, BrokenVariant]]:
    """Every declared variant with its `--adapter` spec (`module:attribute`)."""
    for module_name in VARIANT_MODULES:
        module = importlib.import_module(module_name)
        for attribute, value in vars(module).items():
            if isinstance(value, BrokenVariant):
                yield f"{module_name}:{attribute}", value
