"""The reference schema, defined once with SQLAlchemy Core.

The invariants the contract asks the database to enforce live here, as
constraints, so that no interleaving of app replicas can break them:

- one row per (chat, turn_id, role): a partial unique index, the target of the
  persist operations' ON CONFLICT (MSG-1, MSG-3);
- one usage row per message: a partial unique index (USG-1);
- one active run per chat: a partial unique index whose name identifies the
  RunAlreadyActive conflict (RUN-1, RUN-2).

Identifiers are text with a uuid default, so a guessed non-uuid id never raises
a cast error; it just matches nothing (WS-1, MSG-8).
"""

from __future__ import annotations

import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import CreateIndex, CreateTable

from reference_impl.index_names import ONE_ACTIVE_RUN_INDEX, ONE_ROW_PER_TURN_INDEX

_ACTIVE_RUN = text("status IN ('pending', 'running')")

metadata = MetaData()


def _id() -> Column:
    return Column("id", Text, primary_key=True, server_default=text("gen_random_uuid()::text"))


def _timestamp(name: str) -> Column:
    """A timestamptz stamped by the database clock, never by an app replica's."""
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


chats = Table(
    "chats",
    metadata,
    _id(),
    Column("workspace_id", Text, nullable=False),
    _timestamp("created_at"),
)

messages = Table(
    "messages",
    metadata,
    _id(),
    Column("chat_id", Text, ForeignKey("chats.id"), nullable=False),
    Column("workspace_id", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("turn_id", Text),
    Column("status", Text),  # NULL: a legacy row written before statuses existed
    Column("content", Text, nullable=False, server_default=""),
    Column("parts", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    CheckConstraint("role IN ('user', 'assistant')", name="messages_role"),
    CheckConstraint(
        "status IN ('streaming', 'completed', 'error', 'aborted')", name="messages_status"
    ),
    Index(
        ONE_ROW_PER_TURN_INDEX,
        "chat_id",
        "turn_id",
        "role",
        unique=True,
        postgresql_where=text("turn_id IS NOT NULL"),
    ),
    Index("messages_by_chat", "chat_id", "created_at"),
    Index("messages_streaming_by_age", "updated_at", postgresql_where=text("status = 'streaming'")),
)

usage = Table(
    "usage",
    metadata,
    _id(),
    Column("message_id", Text, ForeignKey("messages.id")),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("model", Text, nullable=False),
    _timestamp("created_at"),
    Index(
        "usage_one_per_message",
        "message_id",
        unique=True,
        postgresql_where=text("message_id IS NOT NULL"),
    ),
)

runs = Table(
    "runs",
    metadata,
    _id(),
    # Ids are random, and two runs may share a created_at: seq orders "latest" stably.
    Column("seq", BigInteger, Identity(), nullable=False),
    Column("chat_id", Text, ForeignKey("chats.id"), nullable=False),
    Column("workspace_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("assistant_message_id", Text, ForeignKey("messages.id")),
    Column("step_count", Integer, nullable=False, server_default=text("0")),
    Column("stop_requested", Boolean, nullable=False, server_default=false()),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(
        "status IN ('pending', 'running', 'succeeded', 'failed', 'aborted')", name="runs_status"
    ),
    Index(ONE_ACTIVE_RUN_INDEX, "chat_id", unique=True, postgresql_where=_ACTIVE_RUN),
    Index("runs_by_chat", "chat_id", "seq"),
    Index("runs_active_by_age", "updated_at", postgresql_where=_ACTIVE_RUN),
)


def ddl() -> list[str]:
    """The schema as idempotent DDL (CREATE ... IF NOT EXISTS), tables in dependency order."""
    dialect = postgresql.dialect()
    statements: list[str] = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    return statements


async def install(dsn: str) -> None:
    """Create the schema in the database at `dsn`; running it again changes nothing.

    The DDL is compiled by SQLAlchemy and run on plain psycopg, because
    SQLAlchemy's asyncio engine would need greenlet, which the project does not
    depend on. One transaction, so a failed install leaves nothing half made; the
    advisory lock makes two installs racing on one database wait for each other.
    """
    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # commits on exit
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('turnproof.install'))")
        for statement in ddl():
            await conn.execute(statement)
