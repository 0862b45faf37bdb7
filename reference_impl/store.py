"""PgTurnStore: the reference TurnStore, on one psycopg 3 async connection.

The rules that make it correct, and that other implementations should copy:

- Every operation is ONE SQL statement wherever the semantics allow, so the
  database alone decides every race (no read-then-write in the app).
- Autocommit: each statement is its own transaction, so an operation that
  returned has committed (DUR-1) and one cut short committed nothing (DUR-2).
- Values are always bound parameters, never formatted into SQL. (The only
  f-strings below splice in this module's own constant SQL fragments.)
- Every time that decides anything comes from the database clock (now()).
- Every read and write is scoped by workspace_id; a foreign or guessed id
  simply matches no row (WS-1).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import timedelta
from typing import Any, Self

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from harness.contract import (
    NO_TEXT_PART,
    TERMINAL_MESSAGE_STATUSES,
    TERMINAL_RUN_STATUSES,
    Clock,
    InvalidArgument,
    Message,
    Run,
    RunAlreadyActive,
    Timers,
    Usage,
    UsageIn,
)
from reference_impl.index_names import ONE_ACTIVE_RUN_INDEX
from reference_impl.stream_writer import PgStreamWriter

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

USAGE_FIELDS = tuple(f.name for f in fields(UsageIn))

UNSTORABLE_VALUE_SQLSTATES = (None, "22P05", "22021")
"""DataErrors of a parameter value that cannot be stored (NUL): psycopg's own check before
sending (no SQLSTATE), untranslatable_character, character_not_in_repertoire."""

BUMP_UPDATED_AT = "greatest(now(), updated_at + interval '1 microsecond')"
"""The new updated_at of a message write: the database clock, and strictly later than
before even if two writes share a now() or the clock steps back (MSG-5)."""


def message_from_row(row: DictRow) -> Message:
    return Message(**row)


def run_from_row(row: DictRow) -> Run:
    return Run(**row)


def usage_from_row(row: DictRow) -> Usage:
    return Usage(**row)


def finished_parts(content: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A finished answer with no text at all still shows the user something (MSG-7)."""
    return parts if content or parts else [dict(NO_TEXT_PART)]


def check_message_status(status: str) -> None:
    if status not in TERMINAL_MESSAGE_STATUSES:
        raise InvalidArgument(
            f"finalize status must be one of {TERMINAL_MESSAGE_STATUSES}, not {status!r}"
        )


def usage_params(usage: UsageIn | None) -> dict[str, Any]:
    """Usage as bind parameters; `with_usage` is false when there is none to write."""
    if usage is None:
        return {"with_usage": False, **dict.fromkeys(USAGE_FIELDS)}
    return {"with_usage": True, **asdict(usage)}


INSERT_TURN_SQL = """
    INSERT INTO messages (chat_id, workspace_id, role, turn_id, status, content, parts)
    SELECT id, workspace_id, %(role)s, %(turn_id)s, %(status)s, %(content)s, %(parts)s
      FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s
"""
"""A turn's row, only in a chat of this workspace (MSG-9); callers add the conflict clause."""


def turn_params(
    chat_id: str,
    workspace_id: str,
    turn_id: str,
    role: str,
    status: str,
    content: str,
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The parameters of INSERT_TURN_SQL (and of looking the turn's row up)."""
    return {
        "chat_id": chat_id,
        "workspace_id": workspace_id,
        "turn_id": turn_id,
        "role": role,
        "status": status,
        "content": content,
        "parts": Jsonb(parts),
    }


class PgTurnStore:
    """One replica's store: one autocommit connection, opened with the DSN exactly as given
    (so its application_name, which the harness uses to find and cut it, is kept).

    Concurrent tasks may share a store; psycopg serialises them on the connection.
    """

    writer_class: type[PgStreamWriter] = PgStreamWriter
    """The streaming writer `writer` opens (the broken writer variants replace it)."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow], *, clock: Clock | None) -> None:
        self._conn = conn
        # Kept because the contract hands it over; the reference never uses app time,
        # every decision is made by the database clock (SWP-5).
        self.clock = clock

    @classmethod
    async def open(cls, dsn: str, *, clock: Clock | None = None) -> Self:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        return cls(conn, clock=clock)

    async def aclose(self) -> None:
        await self._conn.close()

    async def _execute(self, sql: str, params: dict[str, Any]) -> psycopg.AsyncCursor[DictRow]:
        """Run one statement; a value PostgreSQL cannot keep is the caller's InvalidArgument.

        NUL (MSG-10): psycopg refuses it in a text parameter before sending anything (a
        DataError without SQLSTATE), PostgreSQL refuses it in jsonb (22P05) or in text from
        other clients (22021). Either way the statement failed whole: nothing was written.
        """
        try:
            return await self._conn.execute(sql, params)
        except psycopg.DataError as exc:
            if exc.sqlstate in UNSTORABLE_VALUE_SQLSTATES:
                raise InvalidArgument(f"a value the database cannot store: {exc}") from exc
            raise

    async def _one(self, sql: str, params: dict[str, Any]) -> DictRow | None:
        cur = await self._execute(sql, params)
        return await cur.fetchone()

    async def _all(self, sql: str, params: dict[str, Any]) -> list[DictRow]:
        cur = await self._execute(sql, params)
        return await cur.fetchall()

    async def _changed(self, sql: str, params: dict[str, Any]) -> int:
        """Run a write and return how many rows it changed."""
        cur = await self._execute(sql, params)
        return cur.rowcount

    # --- set-up ---------------------------------------------------------------------------

    async def create_chat(self, *, workspace_id: str) -> str:
        row = await self._one(
            "INSERT INTO chats (workspace_id) VALUES (%(workspace_id)s) RETURNING id",
            {"workspace_id": workspace_id},
        )
        assert row is not None
        return row["id"]

    async def insert_legacy_message(self, *, chat_id: str, workspace_id: str, content: str) -> str:
        """An assistant row with status NULL, as written before statuses existed."""
        row = await self._one(
            """
            INSERT INTO messages (chat_id, workspace_id, role, status, content, parts)
            SELECT id, workspace_id, 'assistant', NULL, %(content)s, %(parts)s
              FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s
            RETURNING id
            """,
            {
                "chat_id": chat_id,
                "workspace_id": workspace_id,
                "content": content,
                "parts": Jsonb([{"type": "text", "text": content}]),
            },
        )
        if row is None:
            raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
        return row["id"]

    # --- messages -------------------------------------------------------------------------

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None:
        return await self._persist_turn(
            chat_id=chat_id,
            workspace_id=workspace_id,
            turn_id=turn_id,
            role="user",
            status="completed",
            content=text,
            parts=[{"type": "text", "text": text}],
        )

    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None:
        return await self._persist_turn(
            chat_id=chat_id,
            workspace_id=workspace_id,
            turn_id=turn_id,
            role="assistant",
            status="streaming",
            content="",
            parts=[],
        )

    async def _persist_turn(
        self,
        *,
        chat_id: str,
        workspace_id: str,
        turn_id: str | None,
        role: str,
        status: str,
        content: str,
        parts: list[dict[str, Any]],
    ) -> str | None:
        """Insert the turn's row once (MSG-1, MSG-3); a repeat returns the first row's id.

        ON CONFLICT DO NOTHING makes a concurrent duplicate wait for the winner and
        then do nothing, never raise; only then do we look the winner's id up.
        Selecting from chats scopes the insert to a chat of this workspace (MSG-9).
        """
        if not turn_id:
            return None  # no idempotency key, no row (MSG-2)
        params = turn_params(chat_id, workspace_id, turn_id, role, status, content, parts)
        row = await self._one(
            INSERT_TURN_SQL
            + " ON CONFLICT (chat_id, turn_id, role) WHERE turn_id IS NOT NULL DO NOTHING"
            + " RETURNING id",
            params,
        )
        if row is None:  # the turn already exists, or there is no such chat here
            row = await self._one(
                """
                SELECT id FROM messages
                 WHERE chat_id = %(chat_id)s AND workspace_id = %(workspace_id)s
                   AND turn_id = %(turn_id)s AND role = %(role)s
                """,
                params,
            )
        return row["id"] if row else None

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        """Write the answer so far, only while the row is streaming (MSG-4).

        The status guard is in the WHERE of the writing statement: a concurrent
        finalize or sweep that commits first makes this match nothing.
        """
        return bool(
            await self._changed(
                f"""
                UPDATE messages
                   SET content = %(content)s, parts = %(parts)s, updated_at = {BUMP_UPDATED_AT}
                 WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
                   AND status = 'streaming'
                """,
                {
                    "message_id": message_id,
                    "workspace_id": workspace_id,
                    "content": content,
                    "parts": Jsonb(parts),
                },
            )
        )

    FINALIZE_SQL = f"""
        WITH upd AS (
            UPDATE messages
               SET status = %(status)s, content = %(content)s, parts = %(parts)s,
                   updated_at = {BUMP_UPDATED_AT}
             WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
            RETURNING id
        ), ins AS (
            INSERT INTO usage
                   (message_id, prompt_tokens, completion_tokens, total_tokens, cost_micros, model)
            SELECT id, %(prompt_tokens)s::bigint, %(completion_tokens)s::bigint,
                   %(total_tokens)s::bigint, %(cost_micros)s::bigint, %(model)s::text
              FROM upd WHERE %(with_usage)s
            ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING
        )
        SELECT count(*) AS n FROM upd
    """
    """Message and usage in one statement, so neither lands without the other (DUR-2).
    No status guard: finalize always wins, also over a sweep's 'aborted' (MSG-6). Usage
    only for a row that exists (MSG-8); the first usage stays (USG-1)."""

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
        self._check_status(status)
        row = await self._one(
            self.FINALIZE_SQL,
            {
                "message_id": message_id,
                "workspace_id": workspace_id,
                "status": status,
                "content": content,
                "parts": Jsonb(self._stored_parts(content, parts)),
                **usage_params(usage),
            },
        )
        return bool(row and row["n"])

    def _check_status(self, status: str) -> None:
        """Refuse an unknown finalize status (MSG-6); a seam the broken variants replace."""
        check_message_status(status)

    def _stored_parts(self, content: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The parts a finalize stores (MSG-7); a seam the broken variants replace."""
        return finished_parts(content, parts)

    async def delete_message(self, *, message_id: str, workspace_id: str) -> bool:
        """Delete a message row (the streaming writer's `delete`; not a contract operation).
        Its usage row and a run pointing at it keep existing, pointing at nothing."""
        row = await self._one(
            """
            WITH gone AS (
                DELETE FROM messages
                 WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
                RETURNING id
            ), usage_kept AS (
                UPDATE usage SET message_id = NULL WHERE message_id IN (SELECT id FROM gone)
            ), runs_kept AS (
                UPDATE runs SET assistant_message_id = NULL
                 WHERE assistant_message_id IN (SELECT id FROM gone)
            )
            SELECT count(*) AS n FROM gone
            """,
            {"message_id": message_id, "workspace_id": workspace_id},
        )
        return bool(row and row["n"])

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s",
            {"message_id": message_id, "workspace_id": workspace_id},
        )
        return message_from_row(row) if row else None

    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]:
        """Oldest first; the id only breaks exact created_at ties, so the order is stable."""
        rows = await self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE chat_id = %(chat_id)s AND workspace_id = %(workspace_id)s"
            " ORDER BY created_at, id",
            {"chat_id": chat_id, "workspace_id": workspace_id},
        )
        return [message_from_row(r) for r in rows]

    async def usage_for(self, *, message_id: str) -> list[Usage]:
        rows = await self._all(
            f"SELECT {USAGE_COLUMNS} FROM usage WHERE message_id = %(message_id)s"
            " ORDER BY created_at, id",
            {"message_id": message_id},
        )
        return [usage_from_row(r) for r in rows]

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        """Abort streaming rows not written for `older_than`, by the database clock, in every
        workspace (SWP-1, SWP-5). A step committing first makes its row fresh again, and the
        sweep re-checks it and leaves it (SWP-4); terminal and NULL rows never match (SWP-2)."""
        return await self._changed(
            f"""
            UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}
             WHERE status = 'streaming' AND updated_at < now() - %(older_than)s
            """,
            {"older_than": older_than},
        )

    # --- the streaming writer (coalescing) ----------------------------------------------------

    async def writer(self, debounce: timedelta, *, timers: Timers | None = None) -> PgStreamWriter:
        """A write-behind writer of this store's streaming steps (CW-1 .. CW-7)."""
        return await self.writer_class.open(self, debounce, timers)

    # --- runs -----------------------------------------------------------------------------

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        """Start the chat's one active run; the unique index decides a race (RUN-1, RUN-3).

        Only a violation of that index is RunAlreadyActive; a missing or foreign chat
        is InvalidArgument, and every other error propagates unchanged (RUN-2).
        """
        try:
            row = await self._one(
                f"""
                INSERT INTO runs (chat_id, workspace_id, status, trigger)
                SELECT id, workspace_id, 'running', %(trigger)s
                  FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s
                RETURNING {RUN_COLUMNS}
                """,
                {"chat_id": chat_id, "workspace_id": workspace_id, "trigger": trigger},
            )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == ONE_ACTIVE_RUN_INDEX:
                raise RunAlreadyActive(chat_id) from exc
            raise
        if row is None:
            raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
        return run_from_row(row)

    async def link_assistant(self, *, run_id: str, message_id: str) -> bool:
        """Point the run at its assistant message, only a message of the run's own chat."""
        return bool(
            await self._changed(
                """
                UPDATE runs SET assistant_message_id = m.id, updated_at = now()
                  FROM messages m
                 WHERE runs.id = %(run_id)s AND m.id = %(message_id)s
                   AND m.chat_id = runs.chat_id
                """,
                {"run_id": run_id, "message_id": message_id},
            )
        )

    async def record_step(self, *, run_id: str) -> bool:
        """Count a step and refresh the run, which keeps it from being swept (RUN-7)."""
        return bool(
            await self._changed(
                """
                UPDATE runs SET step_count = step_count + 1, updated_at = now()
                 WHERE id = %(run_id)s AND status IN ('pending', 'running')
                """,
                {"run_id": run_id},
            )
        )

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        """End an active run once; a terminal run is left as it is (RUN-4)."""
        if status not in TERMINAL_RUN_STATUSES:
            raise InvalidArgument(
                f"finish_run status must be one of {TERMINAL_RUN_STATUSES}, not {status!r}"
            )
        return bool(
            await self._changed(
                """
                UPDATE runs SET status = %(status)s, finished_at = now(), updated_at = now()
                 WHERE id = %(run_id)s AND status IN ('pending', 'running')
                """,
                {"run_id": run_id, "status": status},
            )
        )

    async def request_stop(self, *, run_id: str) -> bool:
        """Flag an active run; its owner ends it (RUN-5). updated_at is the owner's
        heartbeat, so a stop request does not refresh it: a dead owner's run is still swept."""
        return bool(
            await self._changed(
                """
                UPDATE runs SET stop_requested = true
                 WHERE id = %(run_id)s AND status IN ('pending', 'running')
                """,
                {"run_id": run_id},
            )
        )

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        row = await self._one(
            f"SELECT {RUN_COLUMNS} FROM runs"
            " WHERE chat_id = %(chat_id)s AND workspace_id = %(workspace_id)s"
            " ORDER BY seq DESC LIMIT 1",
            {"chat_id": chat_id, "workspace_id": workspace_id},
        )
        return run_from_row(row) if row else None

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        """Abort active runs not refreshed for `older_than`, by the database clock (RUN-7)."""
        return await self._changed(
            """
            UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()
             WHERE status IN ('pending', 'running') AND updated_at < now() - %(older_than)s
            """,
            {"older_than": older_than},
        )
