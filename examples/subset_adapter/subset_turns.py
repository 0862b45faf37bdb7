"""A partial turn store: idempotent turns and token usage, nothing else (`turns`, `usage`).

It shows how an implementation that does only part of the contract is certified on
what it declares. There are no statuses, no steps, no sweeps and no runs here: those
operations exist only because every store has the whole interface, and raise
NotImplementedError. turnproof skips every scenario needing an undeclared capability,
and its capability guard proves that no scenario it runs calls one of them.

One psycopg 3 connection in autocommit: each operation is one statement (the turn's
lookup after a conflict aside), so the database decides every race.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from harness import InvalidArgument, Message, Run, Usage, UsageIn
from harness.contract import TERMINAL_MESSAGE_STATUSES, Clock

SCHEMA = """
CREATE TABLE IF NOT EXISTS subset_chats (
    id text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    workspace_id text NOT NULL
);
CREATE TABLE IF NOT EXISTS subset_messages (
    id text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    chat_id text NOT NULL REFERENCES subset_chats (id),
    workspace_id text NOT NULL,
    role text NOT NULL CHECK (role IN ('user', 'assistant')),
    turn_id text NOT NULL,
    content text NOT NULL,
    parts jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (chat_id, turn_id, role)
);
CREATE TABLE IF NOT EXISTS subset_usage (
    message_id text PRIMARY KEY REFERENCES subset_messages (id),
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    total_tokens bigint NOT NULL,
    cost_micros bigint NOT NULL,
    model text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

MESSAGE = (
    "id, chat_id, workspace_id, role, turn_id, NULL::text AS status, content, parts,"
    " created_at, updated_at"
)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def no_nul(*values: Any) -> None:
    """PostgreSQL keeps no NUL in text or jsonb: refuse it rather than alter it (MSG-10)."""
    if any(has_nul(v) for v in values):
        raise InvalidArgument("text and parts cannot contain NUL (\\u0000)")


class SubsetTurnStore:
    """One replica: one connection opened with the DSN as given (its application_name
    is how the harness tells this replica's connections apart)."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        self._conn = conn

    async def aclose(self) -> None:
        await self._conn.close()

    async def _one(self, sql: str, params: dict[str, Any]) -> DictRow | None:
        cur = await self._conn.execute(sql, params)
        return await cur.fetchone()

    # turns ---------------------------------------------------------------------------------

    async def create_chat(self, *, workspace_id: str) -> str:
        row = await self._one(
            "INSERT INTO subset_chats (workspace_id) VALUES (%(ws)s) RETURNING id",
            {"ws": workspace_id},
        )
        assert row is not None
        return row["id"]

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None:
        return await self._persist(chat_id, workspace_id, turn_id, "user", text)

    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None:
        return await self._persist(chat_id, workspace_id, turn_id, "assistant", "")

    async def _persist(
        self, chat_id: str, workspace_id: str, turn_id: str | None, role: str, text: str
    ) -> str | None:
        """The turn's row, once per (chat, turn, role); only in a chat of this workspace."""
        if not turn_id:
            return None
        no_nul(text)
        params = {
            "chat": chat_id,
            "ws": workspace_id,
            "turn": turn_id,
            "role": role,
            "text": text,
            "parts": Jsonb([{"type": "text", "text": text}] if text else []),
        }
        row = await self._one(
            """
            INSERT INTO subset_messages (chat_id, workspace_id, role, turn_id, content, parts)
            SELECT id, workspace_id, %(role)s, %(turn)s, %(text)s, %(parts)s
              FROM subset_chats WHERE id = %(chat)s AND workspace_id = %(ws)s
            ON CONFLICT (chat_id, turn_id, role) DO NOTHING
            RETURNING id
            """,
            params,
        )
        if row is None:  # an earlier call's row, or no such chat in this workspace
            row = await self._one(
                "SELECT id FROM subset_messages WHERE chat_id = %(chat)s"
                " AND workspace_id = %(ws)s AND turn_id = %(turn)s AND role = %(role)s",
                params,
            )
        return row["id"] if row else None

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        row = await self._one(
            f"SELECT {MESSAGE} FROM subset_messages WHERE id = %(id)s AND workspace_id = %(ws)s",
            {"id": message_id, "ws": workspace_id},
        )
        return Message(**row) if row else None

    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]:
        cur = await self._conn.execute(
            f"SELECT {MESSAGE} FROM subset_messages"
            " WHERE chat_id = %(chat)s AND workspace_id = %(ws)s ORDER BY created_at, id",
            {"chat": chat_id, "ws": workspace_id},
        )
        return [Message(**row) for row in await cur.fetchall()]

    # usage ---------------------------------------------------------------------------------

    async def finalize(
        self,
        *,
        message_id: str,
        workspace_id: str,
        status: str,
        content: str,
        parts: list[dict[str, Any]],
        usage: UsageIn | None,
    ) -> bool:
        """The answer and its usage in one statement; the first usage row stays (USG-1)."""
        if status not in TERMINAL_MESSAGE_STATUSES:
            raise InvalidArgument(f"status must be one of {TERMINAL_MESSAGE_STATUSES}")
        no_nul(content, parts)
        counts = asdict(usage) if usage else {f.name: None for f in fields(UsageIn)}
        row = await self._one(
            """
            WITH answered AS (
                UPDATE subset_messages
                   SET content = %(content)s, parts = %(parts)s, updated_at = clock_timestamp()
                 WHERE id = %(id)s AND workspace_id = %(ws)s
                RETURNING id
            ), counted AS (
                INSERT INTO subset_usage (message_id, prompt_tokens, completion_tokens,
                                          total_tokens, cost_micros, model)
                SELECT id, %(prompt_tokens)s::bigint, %(completion_tokens)s::bigint,
                       %(total_tokens)s::bigint, %(cost_micros)s::bigint, %(model)s::text
                  FROM answered WHERE %(with_usage)s
                ON CONFLICT (message_id) DO NOTHING
            )
            SELECT count(*) AS n FROM answered
            """,
            {
                "id": message_id,
                "ws": workspace_id,
                "content": content,
                "parts": Jsonb(parts),
                "with_usage": usage is not None,
                **counts,
            },
        )
        return bool(row and row["n"])

    async def usage_for(self, *, message_id: str) -> list[Usage]:
        cur = await self._conn.execute(
            "SELECT message_id, prompt_tokens, completion_tokens, total_tokens, cost_micros,"
            " model, created_at FROM subset_usage WHERE message_id = %(id)s",
            {"id": message_id},
        )
        return [Usage(**row) for row in await cur.fetchall()]

    # not declared: statuses, sweeps, runs ----------------------------------------------------

    async def insert_legacy_message(self, *, chat_id: str, workspace_id: str, content: str) -> str:
        raise NotImplementedError("statuses are not tracked: capability 'streaming' not declared")

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        raise NotImplementedError("no streaming steps: capability 'streaming' not declared")

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        raise NotImplementedError("no sweeps: capability 'sweep' not declared")

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def link_assistant(self, *, run_id: str, message_id: str) -> bool:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def record_step(self, *, run_id: str) -> bool:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def request_stop(self, *, run_id: str) -> bool:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        raise NotImplementedError("no runs: capability 'runs' not declared")

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        raise NotImplementedError("no runs: capability 'runs' not declared")


class SubsetAdapter:
    name = "subset-turns"
    capabilities = frozenset({"turns", "usage"})

    async def install(self, dsn: str) -> None:
        """Create the three tables; running it again changes nothing."""
        async with await psycopg.AsyncConnection.connect(dsn) as conn:  # commits on exit
            await conn.execute(SCHEMA)

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> SubsetTurnStore:
        """`clock` is unused: every time here is the database's."""
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        return SubsetTurnStore(conn)


adapter = SubsetAdapter()
