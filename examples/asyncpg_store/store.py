"""AsyncpgTurnStore: the durable turn store on asyncpg, with a pool of its own.

It follows the reference implementation (reference_impl/store.py) rule for rule: one
statement per operation wherever the semantics allow, autocommit, bound parameters only,
the database clock, every read and write scoped by workspace_id. What it adds is asyncpg's
wire habits, for the statement gate to cope with: a pool (each operation may run on
another connection), a codec set-up at connect, prepared statements described first
(Parse/Describe/Flush, then Bind/Execute/Sync) and cached per connection, and the pool's
reset query when a connection goes back.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Self

import asyncpg
import psycopg

from harness.contract import (
    NO_TEXT_PART,
    TERMINAL_MESSAGE_STATUSES,
    TERMINAL_RUN_STATUSES,
    Clock,
    InvalidArgument,
    Message,
    Run,
    RunAlreadyActive,
    Usage,
    UsageIn,
)

POOL_SIZE = 4
ONE_ACTIVE_RUN_INDEX = "runs_one_active_per_chat"
MESSAGE_COLUMNS = (
    "id, chat_id, workspace_id, role, turn_id, status, content, parts, created_at, updated_at"
)
RUN_COLUMNS = (
    "id, chat_id, workspace_id, status, trigger, assistant_message_id, step_count,"
    " stop_requested, created_at, updated_at, finished_at"
)
USAGE_COLUMNS = (
    "message_id, prompt_tokens, completion_tokens, total_tokens, cost_micros, model, created_at"
)
BUMP_UPDATED_AT = "greatest(now(), updated_at + interval '1 microsecond')"
"""The database clock, and strictly later than before (MSG-5)."""


def connect_kwargs(dsn: str) -> dict[str, Any]:
    """asyncpg's arguments for a libpq DSN (key=value or URI). Startup parameters
    (application_name, `options` -c settings) become server_settings, which asyncpg sends
    on every pooled connection: the harness finds and gates them by application_name."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    settings: dict[str, str] = {}
    if "application_name" in params:
        settings["application_name"] = str(params["application_name"])
    words = shlex.split(str(params.get("options", "")))
    for flag, setting in zip(words[::2], words[1::2], strict=False):
        if flag != "-c" or "=" not in setting:
            raise ValueError(f"options {params['options']!r}: only '-c name=value' is supported")
        name, value = setting.split("=", 1)
        settings[name] = value
    return {
        "host": params.get("host"),
        "port": int(params["port"]) if "port" in params else None,
        "user": params.get("user"),
        "password": params.get("password"),
        "database": params.get("dbname"),
        "server_settings": settings,
    }


async def _json_codecs(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


UNSTORABLE_VALUE_SQLSTATES = ("22021", "22P05")
"""NUL in a text parameter (character_not_in_repertoire) or in jsonb (untranslatable_character)."""


@contextmanager
def storable_values() -> Iterator[None]:
    """A value PostgreSQL refuses to store (NUL) is the caller's InvalidArgument; the
    statement failed whole, so nothing was written (MSG-10)."""
    try:
        yield
    except asyncpg.DataError as exc:
        if exc.sqlstate in UNSTORABLE_VALUE_SQLSTATES:
            raise InvalidArgument(f"a value the database cannot store: {exc}") from exc
        raise


def usage_args(usage: UsageIn | None) -> tuple[Any, ...]:
    """$7..$11 of finalize: the usage row's values, or NULLs when there is none."""
    if usage is None:
        return (None,) * 5
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cost_micros,
        usage.model,
    )


class AsyncpgTurnStore:
    """One replica: a pool of asyncpg connections, every statement autocommit."""

    def __init__(self, pool: asyncpg.Pool, *, clock: Clock | None) -> None:
        self._pool = pool
        self.clock = clock  # kept as the contract hands it over; never used (SWP-5)

    @classmethod
    async def open(cls, dsn: str, *, clock: Clock | None = None) -> Self:
        pool = await asyncpg.create_pool(
            min_size=1, max_size=POOL_SIZE, init=_json_codecs, **connect_kwargs(dsn)
        )
        return cls(pool, clock=clock)

    async def aclose(self) -> None:
        await self._pool.close()

    async def _one(self, sql: str, *args: Any) -> asyncpg.Record | None:
        with storable_values():
            return await self._pool.fetchrow(sql, *args)

    async def _all(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        with storable_values():
            return await self._pool.fetch(sql, *args)

    async def _changed(self, sql: str, *args: Any) -> int:
        """Run a write; how many rows it changed (from the command tag, 'UPDATE 3')."""
        with storable_values():
            tag = await self._pool.execute(sql, *args)
        return int(tag.rsplit(" ", 1)[-1])

    # --- set-up ---------------------------------------------------------------------------

    async def create_chat(self, *, workspace_id: str) -> str:
        row = await self._one(
            "INSERT INTO chats (workspace_id) VALUES ($1) RETURNING id", workspace_id
        )
        assert row is not None
        return row["id"]

    async def insert_legacy_message(self, *, chat_id: str, workspace_id: str, content: str) -> str:
        row = await self._one(
            """
            INSERT INTO messages (chat_id, workspace_id, role, status, content, parts)
            SELECT id, workspace_id, 'assistant', NULL, $3, $4::jsonb
              FROM chats WHERE id = $1 AND workspace_id = $2
            RETURNING id
            """,
            chat_id,
            workspace_id,
            content,
            [{"type": "text", "text": content}],
        )
        if row is None:
            raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
        return row["id"]

    # --- messages -------------------------------------------------------------------------

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None:
        parts = [{"type": "text", "text": text}]
        return await self._persist_turn(
            chat_id, workspace_id, turn_id, "user", "completed", text, parts
        )

    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None:
        return await self._persist_turn(
            chat_id, workspace_id, turn_id, "assistant", "streaming", "", []
        )

    async def _persist_turn(
        self,
        chat_id: str,
        workspace_id: str,
        turn_id: str | None,
        role: str,
        status: str,
        content: str,
        parts: list[dict[str, Any]],
    ) -> str | None:
        """Insert once (MSG-1, MSG-3): ON CONFLICT DO NOTHING, then look the winner up."""
        if not turn_id:
            return None  # no idempotency key, no row (MSG-2)
        row = await self._one(
            """
            INSERT INTO messages (chat_id, workspace_id, role, turn_id, status, content, parts)
            SELECT id, workspace_id, $4, $3, $5, $6, $7::jsonb
              FROM chats WHERE id = $1 AND workspace_id = $2
            ON CONFLICT (chat_id, turn_id, role) WHERE turn_id IS NOT NULL DO NOTHING
            RETURNING id
            """,
            chat_id,
            workspace_id,
            turn_id,
            role,
            status,
            content,
            parts,
        )
        if row is None:  # the turn already exists, or there is no such chat here
            row = await self._one(
                "SELECT id FROM messages"
                " WHERE chat_id = $1 AND workspace_id = $2 AND turn_id = $3 AND role = $4",
                chat_id,
                workspace_id,
                turn_id,
                role,
            )
        return row["id"] if row else None

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        """The status guard is in the WHERE of the write (MSG-4)."""
        return bool(
            await self._changed(
                f"""
                UPDATE messages SET content = $3, parts = $4::jsonb, updated_at = {BUMP_UPDATED_AT}
                 WHERE id = $1 AND workspace_id = $2 AND status = 'streaming'
                """,
                message_id,
                workspace_id,
                content,
                parts,
            )
        )

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
        """Message and usage in one statement (DUR-2); no status guard (MSG-6)."""
        if status not in TERMINAL_MESSAGE_STATUSES:
            raise InvalidArgument(
                f"finalize status must be one of {TERMINAL_MESSAGE_STATUSES}, not {status!r}"
            )
        finished = parts if content or parts else [dict(NO_TEXT_PART)]  # MSG-7
        row = await self._one(
            f"""
            WITH upd AS (
                UPDATE messages
                   SET status = $3, content = $4, parts = $5::jsonb, updated_at = {BUMP_UPDATED_AT}
                 WHERE id = $1 AND workspace_id = $2
                RETURNING id
            ), ins AS (
                INSERT INTO usage
                       (message_id, prompt_tokens, completion_tokens, total_tokens,
                        cost_micros, model)
                SELECT id, $7::bigint, $8::bigint, $9::bigint, $10::bigint, $11::text
                  FROM upd WHERE $6::boolean
                ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING
            )
            SELECT count(*) AS n FROM upd
            """,
            message_id,
            workspace_id,
            status,
            content,
            finished,
            usage is not None,
            *usage_args(usage),
        )
        return bool(row and row["n"])

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND workspace_id = $2",
            message_id,
            workspace_id,
        )
        return Message(**row) if row else None

    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]:
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND workspace_id = $2"
            " ORDER BY created_at, id",
            chat_id,
            workspace_id,
        )
        return [Message(**row) for row in rows]

    async def usage_for(self, *, message_id: str) -> list[Usage]:
        rows = await self._all(
            f"SELECT {USAGE_COLUMNS} FROM usage WHERE message_id = $1 ORDER BY created_at, id",
            message_id,
        )
        return [Usage(**row) for row in rows]

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        """Staleness by the database clock, in every workspace (SWP-1, SWP-5)."""
        return await self._changed(
            f"""
            UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}
             WHERE status = 'streaming' AND updated_at < now() - $1::interval
            """,
            older_than,
        )

    # --- runs -----------------------------------------------------------------------------

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        """The unique index decides a race; only its violation is RunAlreadyActive."""
        try:
            row = await self._one(
                f"""
                INSERT INTO runs (chat_id, workspace_id, status, trigger)
                SELECT id, workspace_id, 'running', $3 FROM chats
                 WHERE id = $1 AND workspace_id = $2
                RETURNING {RUN_COLUMNS}
                """,
                chat_id,
                workspace_id,
                trigger,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == ONE_ACTIVE_RUN_INDEX:
                raise RunAlreadyActive(chat_id) from exc
            raise
        if row is None:
            raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
        return Run(**row)

    async def link_assistant(self, *, run_id: str, message_id: str) -> bool:
        return bool(
            await self._changed(
                """
                UPDATE runs SET assistant_message_id = m.id, updated_at = now()
                  FROM messages m
                 WHERE runs.id = $1 AND m.id = $2 AND m.chat_id = runs.chat_id
                """,
                run_id,
                message_id,
            )
        )

    async def record_step(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET step_count = step_count + 1, updated_at = now()"
                " WHERE id = $1 AND status IN ('pending', 'running')",
                run_id,
            )
        )

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        if status not in TERMINAL_RUN_STATUSES:
            raise InvalidArgument(
                f"finish_run status must be one of {TERMINAL_RUN_STATUSES}, not {status!r}"
            )
        return bool(
            await self._changed(
                "UPDATE runs SET status = $2, finished_at = now(), updated_at = now()"
                " WHERE id = $1 AND status IN ('pending', 'running')",
                run_id,
                status,
            )
        )

    async def request_stop(self, *, run_id: str) -> bool:
        """Does not refresh updated_at, the owner's heartbeat (RUN-5, RUN-7)."""
        return bool(
            await self._changed(
                "UPDATE runs SET stop_requested = true"
                " WHERE id = $1 AND status IN ('pending', 'running')",
                run_id,
            )
        )

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        row = await self._one(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE chat_id = $1 AND workspace_id = $2"
            " ORDER BY seq DESC LIMIT 1",
            chat_id,
            workspace_id,
        )
        return Run(**row) if row else None

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        return await self._changed(
            "UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()"
            " WHERE status IN ('pending', 'running') AND updated_at < now() - $1::interval",
            older_than,
        )


class ReadThenWriteStep(AsyncpgTurnStore):
    """Deliberately broken: a finalize committing between the read and the write is
    overwritten by the late step (MSG-4 fails it)."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        """The guard is read first, and the write does not repeat it."""
        row = await self._one(
            "SELECT status FROM messages WHERE id = $1 AND workspace_id = $2",
            message_id,
            workspace_id,
        )
        if row is None or row["status"] != "streaming":
            return False
        return bool(
            await self._changed(
                f"""
                UPDATE messages SET content = $3, parts = $4::jsonb, updated_at = {BUMP_UPDATED_AT}
                 WHERE id = $1 AND workspace_id = $2
                """,
                message_id,
                workspace_id,
                content,
                parts,
            )
        )
