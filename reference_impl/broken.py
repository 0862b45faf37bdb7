"""Deliberately broken variants of the reference store, one bug each.

They exist to prove the suite catches each bug class. Every variant is declared once, as a
`BrokenVariant(store_class, breaks=(clause IDs), channel=...)`: the clauses
it breaks (`MSG-1d`, see `turnproof requirements`) and the channel through which the suite
catches it (sequential, race, kill, restart, network, skew). Otherwise it is the reference,
so a run of its requirements' scenarios must fail a scenario of each declared clause and no
scenario of another clause; a variant caught only through a race, a killed writer, a crashed
server, a network fault or a skewed clock passes every sequential scenario, which is the
point: the concurrency and fault scenarios catch what a sequential suite cannot.
`tests/test_broken_variants.py` builds its cases from these declarations.

Load one as `reference_impl.broken:<attribute>`, e.g. `reference_impl.broken:unguarded_step`.
Never use them for anything else.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from harness.contract import (
    NO_TEXT_PART,
    TERMINAL_RUN_STATUSES,
    Clock,
    InvalidArgument,
    Message,
    Run,
    RunAlreadyActive,
    Usage,
    UsageIn,
)
from reference_impl.broken_variant import BrokenVariant
from reference_impl.index_names import ONE_ACTIVE_RUN_INDEX, ONE_ROW_PER_TURN_INDEX
from reference_impl.store import (
    BUMP_UPDATED_AT,
    INSERT_TURN_SQL,
    MESSAGE_COLUMNS,
    RUN_COLUMNS,
    USAGE_COLUMNS,
    PgTurnStore,
    check_message_status,
    finished_parts,
    message_from_row,
    run_from_row,
    turn_params,
    usage_from_row,
    usage_params,
)

_UNGUARDED_STEP_SQL = f"""
    UPDATE messages
       SET content = %(content)s, parts = %(parts)s, updated_at = {BUMP_UPDATED_AT}
     WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
"""


def _step_params(
    message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "workspace_id": workspace_id,
        "content": content,
        "parts": Jsonb(parts),
    }


def _replace_once(sql: str, old: str, new: str) -> str:
    """Edit the reference's SQL, failing loudly if it no longer reads as expected."""
    if sql.count(old) != 1:
        raise RuntimeError(f"broken variant out of date: {old!r} not found once in {sql!r}")
    return sql.replace(old, new)


# --- messages ---------------------------------------------------------------------------------


class UnguardedStep(PgTurnStore):
    """MSG-4: append_step has no status guard, so it writes over a finished row."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        params = _step_params(message_id, workspace_id, content, parts)
        return bool(await self._changed(_UNGUARDED_STEP_SQL, params))


class ReadThenWriteStep(PgTurnStore):
    """MSG-4 (race only): reads the status, then writes unguarded in a second statement."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        params = _step_params(message_id, workspace_id, content, parts)
        row = await self._one(
            "SELECT status FROM messages"
            " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s",
            params,
        )
        if row is None or row["status"] != "streaming":
            return False
        return bool(await self._changed(_UNGUARDED_STEP_SQL, params))


class CheckThenInsertPersist(PgTurnStore):
    """MSG-1/MSG-3 (race only): looks for the turn, then inserts without ON CONFLICT,
    so a concurrent duplicate raises UniqueViolation."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        params = turn_params(**turn)
        row = await self._one(
            "SELECT id FROM messages WHERE chat_id = %(chat_id)s"
            " AND workspace_id = %(workspace_id)s AND turn_id = %(turn_id)s AND role = %(role)s",
            params,
        )
        if row is None:
            row = await self._one(INSERT_TURN_SQL + " RETURNING id", params)
        return row["id"] if row else None


class UsageLastWriterWins(PgTurnStore):
    """USG-1: finalize upserts usage, so a later finalize overwrites the first usage."""

    FINALIZE_SQL = _replace_once(
        PgTurnStore.FINALIZE_SQL,
        "DO NOTHING",
        "DO UPDATE SET prompt_tokens = excluded.prompt_tokens,"
        " completion_tokens = excluded.completion_tokens, total_tokens = excluded.total_tokens,"
        " cost_micros = excluded.cost_micros, model = excluded.model",
    )


class FinalizeInTwoStatements(PgTurnStore):
    """DUR-2 (fault only): finalize commits the message, then usage, in two statements,
    so a writer killed between them leaves a finished message without its usage."""

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
        check_message_status(status)
        params = {
            "message_id": message_id,
            "workspace_id": workspace_id,
            "status": status,
            "content": content,
            "parts": Jsonb(finished_parts(content, parts)),
            **usage_params(usage),
        }
        changed = await self._changed(
            f"""
            UPDATE messages
               SET status = %(status)s, content = %(content)s, parts = %(parts)s,
                   updated_at = {BUMP_UPDATED_AT}
             WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s
            """,
            params,
        )
        if changed and usage is not None:
            await self._changed(
                """
                INSERT INTO usage
                       (message_id, prompt_tokens, completion_tokens, total_tokens,
                        cost_micros, model)
                VALUES (%(message_id)s, %(prompt_tokens)s, %(completion_tokens)s,
                        %(total_tokens)s, %(cost_micros)s, %(model)s)
                ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING
                """,
                params,
            )
        return bool(changed)


class StepsInMemory(PgTurnStore):
    """DUR-1 (fault only): append_step keeps the step in this process and returns True
    without writing it; this store's own reads show it, a crash loses it."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow], *, clock: Clock | None) -> None:
        super().__init__(conn, clock=clock)
        self._steps: dict[str, tuple[str, list[dict[str, Any]]]] = {}

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        message = await super().get_message(message_id=message_id, workspace_id=workspace_id)
        if message is None or message.status != "streaming":
            return False
        self._steps[message_id] = (content, parts)
        return True

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        message = await super().get_message(message_id=message_id, workspace_id=workspace_id)
        step = self._steps.get(message_id)
        if message is not None and step is not None and message.status == "streaming":
            message = replace(message, content=step[0], parts=step[1])
        return message


# --- sweep ------------------------------------------------------------------------------------


class SweepWithoutStaleness(PgTurnStore):
    """SWP-2: sweep_streaming ignores older_than and aborts live, fresh rows too."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE status = 'streaming'",
            {},
        )


class SweepTouchesLegacy(PgTurnStore):
    """SWP-2: sweep_streaming treats a legacy NULL status as streaming and aborts it."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE coalesce(status, 'streaming') = 'streaming'"
            " AND updated_at < now() - %(older_than)s",
            {"older_than": older_than},
        )


# --- runs -------------------------------------------------------------------------------------


class CheckThenActBegin(PgTurnStore):
    """RUN-1 (race only): no unique index; begin_run looks for an active run, then inserts."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        active = await self._one(
            "SELECT 1 FROM runs WHERE chat_id = %(chat_id)s AND workspace_id = %(workspace_id)s"
            " AND status IN ('pending', 'running')",
            {"chat_id": chat_id, "workspace_id": workspace_id},
        )
        if active is not None:
            raise RunAlreadyActive(chat_id)
        return await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)


class BeginSkipsClaimedChat(PgTurnStore):
    """RUN-3 (race only): begin_run claims the chat row (FOR UPDATE SKIP LOCKED) in a
    transaction and reports a chat another begin has claimed as RunAlreadyActive, though
    that begin has not committed and may yet die."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        where = {"chat_id": chat_id, "workspace_id": workspace_id}
        async with self._conn.transaction():
            claimed = await self._one(
                "SELECT id FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s"
                " FOR UPDATE SKIP LOCKED",
                where,
            )
            if claimed is None and await self._one(
                "SELECT id FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s",
                where,
            ):
                raise RunAlreadyActive(chat_id)
            return await super().begin_run(
                chat_id=chat_id, workspace_id=workspace_id, trigger=trigger
            )


class BeginSwallowsConflict(PgTurnStore):
    """RUN-1: a losing begin_run returns the existing active run instead of raising."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        try:
            return await super().begin_run(
                chat_id=chat_id, workspace_id=workspace_id, trigger=trigger
            )
        except RunAlreadyActive:
            run = await self.latest_run(chat_id=chat_id, workspace_id=workspace_id)
            assert run is not None
            return run


class BeginBlamesEverything(PgTurnStore):
    """RUN-2: begin_run reports every failure, a missing chat included, as RunAlreadyActive."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        try:
            return await super().begin_run(
                chat_id=chat_id, workspace_id=workspace_id, trigger=trigger
            )
        except Exception as exc:
            raise RunAlreadyActive(chat_id) from exc


# --- fault-only bugs: only a cut connection or a lost answer reveals them ----------------


class SwallowsLostConnections(PgTurnStore):
    """DUR-4 (fault only): a lost connection reads as "no row", so an operation whose
    answer was lost returns None or False instead of raising."""

    async def _one(self, sql: str, params: dict[str, Any]) -> DictRow | None:
        try:
            return await super()._one(sql, params)
        except psycopg.OperationalError:
            return None

    async def _changed(self, sql: str, params: dict[str, Any]) -> int:
        try:
            return await super()._changed(sql, params)
        except psycopg.OperationalError:
            return 0


class InsertOnlyPersist(PgTurnStore):
    """DUR-4 (and MSG-1): persist inserts without ON CONFLICT, so retrying a turn whose
    answer was lost raises UniqueViolation."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        row = await self._one(
            INSERT_TURN_SQL + " RETURNING id",
            turn_params(**turn),
        )
        return row["id"] if row else None


class BeginLeaksConflict(PgTurnStore):
    """DUR-4 (and RUN-1): the one-active-run conflict escapes as psycopg's UniqueViolation,
    so retrying a begin whose answer was lost raises neither a run nor RunAlreadyActive."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        try:
            return await super().begin_run(
                chat_id=chat_id, workspace_id=workspace_id, trigger=trigger
            )
        except RunAlreadyActive as exc:
            raise exc.__cause__ or exc from None


class StepInTwoStatements(PgTurnStore):
    """DUR-2 (fault only): append_step writes the content, then the parts, in two
    statements, so a step cut between them leaves new content over old parts."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        guard = (
            "WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s AND status = 'streaming'"
        )
        params = {
            "message_id": message_id,
            "workspace_id": workspace_id,
            "content": content,
            "parts": Jsonb(parts),
        }
        changed = await self._changed(
            f"UPDATE messages SET content = %(content)s, updated_at = {BUMP_UPDATED_AT} {guard}",
            params,
        )
        if changed:
            await self._changed(f"UPDATE messages SET parts = %(parts)s {guard}", params)
        return bool(changed)


class SweepCutoffFromSendTime(PgTurnStore):
    """SWP-5: the staleness cutoff is the replica's time when the sweep is called, so a
    sweep delayed in transit spares rows that are stale when it arrives."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        now = self.clock() if self.clock is not None else datetime.now(UTC)
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE status = 'streaming' AND updated_at < %(cutoff)s",
            {"cutoff": now - older_than},
        )


# --- ORM-shaped: every operation one explicit transaction of several statements --------------


class ReadThenWriteInTransaction(PgTurnStore):
    """MSG-4 (race only), shaped like an ORM session: one explicit transaction reads the row,
    finds it streaming, and writes the step back unguarded, then commits. Under READ
    COMMITTED a finalize that commits between the read and the write is overwritten."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        params = _step_params(message_id, workspace_id, content, parts)
        async with self._conn.transaction():
            row = await self._one(
                "SELECT status FROM messages"
                " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s",
                params,
            )
            if row is None or row["status"] != "streaming":
                return False
            return bool(await self._changed(_UNGUARDED_STEP_SQL, params))


class CheckThenInsertRepeatableRead(PgTurnStore):
    """MSG-1/MSG-3 (race only), ORM-shaped: a REPEATABLE READ transaction looks the turn up and
    inserts it when absent, and the schema has no unique index on the turn: both writers'
    snapshots miss the other's row, both insert, the turn has two rows."""

    ISOLATION = sql.SQL("REPEATABLE READ")

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        params = turn_params(**turn)
        await self._conn.execute(sql.SQL("BEGIN ISOLATION LEVEL {}").format(self.ISOLATION))
        try:
            row = await self._one(
                "SELECT id FROM messages WHERE chat_id = %(chat_id)s AND workspace_id ="
                " %(workspace_id)s AND turn_id = %(turn_id)s AND role = %(role)s",
                params,
            )
            if row is None:
                row = await self._one(INSERT_TURN_SQL + " RETURNING id", params)
            await self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                await self._conn.execute("ROLLBACK")
            raise
        return row["id"] if row else None


class CheckThenInsertSerializable(CheckThenInsertRepeatableRead):
    """MSG-1/MSG-3 (race only), ORM-shaped: the same check-then-insert under SERIALIZABLE and
    without the unique index: PostgreSQL aborts one of two concurrent writers with a
    serialization failure, which this store does not retry, so a valid duplicate write
    raises instead of returning the turn's id."""

    ISOLATION = sql.SQL("SERIALIZABLE")


# --- clause variants: messages ----------------------------------------------------------------

_ON_TURN_CONFLICT = " ON CONFLICT (chat_id, turn_id, role) WHERE turn_id IS NOT NULL"


class NewIdOnRepeat(PgTurnStore):
    """MSG-1a: a repeated persist_user_turn returns an id of its own making (as an ORM that
    makes ids client-side does), not the existing row's, though it writes no second row."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        params = turn_params(**turn)
        row = await self._one(
            INSERT_TURN_SQL + _ON_TURN_CONFLICT + " DO NOTHING RETURNING id", params
        )
        if row is not None:
            return row["id"]
        existing = await super()._persist_turn(**turn)
        return str(uuid.uuid4()) if existing is not None and turn["role"] == "user" else existing


class LastTextWins(PgTurnStore):
    """MSG-1d: a repeated persist_user_turn overwrites the text (ON CONFLICT DO UPDATE)."""

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None:
        if not turn_id:
            return None
        parts = [{"type": "text", "text": text}]
        row = await self._one(
            INSERT_TURN_SQL
            + _ON_TURN_CONFLICT
            + " DO UPDATE SET content = excluded.content, parts = excluded.parts RETURNING id",
            turn_params(chat_id, workspace_id, turn_id, "user", "completed", text, parts),
        )
        return row["id"] if row else None


class TurnKeyWithoutChat(PgTurnStore):
    """MSG-1e: the idempotency key leaves the chat out, so a turn id already used in another
    chat of the workspace returns that chat's row."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if turn["turn_id"]:
            row = await self._one(
                "SELECT id FROM messages WHERE workspace_id = %(workspace_id)s"
                " AND turn_id = %(turn_id)s AND role = %(role)s",
                {k: turn[k] for k in ("workspace_id", "turn_id", "role")},
            )
            if row is not None:
                return row["id"]
        return await super()._persist_turn(**turn)


class IdWithoutTurn(PgTurnStore):
    """MSG-2a: a persist without a turn id writes nothing but returns a made-up id."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return str(uuid.uuid4())
        return await super()._persist_turn(**turn)


class RowWithoutTurn(PgTurnStore):
    """MSG-2b: a persist without a turn id returns None but still writes a row."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            params = turn_params(**(turn | {"turn_id": ""}))
            await self._changed(INSERT_TURN_SQL, params | {"turn_id": None})
            return None
        return await super()._persist_turn(**turn)


class ShellWithPlaceholder(PgTurnStore):
    """MSG-3a: the assistant shell carries placeholder text instead of none."""

    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None:
        return await self._persist_turn(
            chat_id=chat_id,
            workspace_id=workspace_id,
            turn_id=turn_id,
            role="assistant",
            status="streaming",
            content="…",
            parts=[{"type": "text", "text": "…"}],
        )


class ShellWithoutStatus(PgTurnStore):
    """MSG-3b: the assistant shell is written without a status, like a legacy row."""

    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None:
        return await self._persist_turn(
            chat_id=chat_id,
            workspace_id=workspace_id,
            turn_id=turn_id,
            role="assistant",
            status=None,  # type: ignore[arg-type]
            content="",
            parts=[],
        )


class StepWritesContentOnly(PgTurnStore):
    """MSG-4a: append_step returns True but writes the content only, not the parts."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        return bool(
            await self._changed(
                f"UPDATE messages SET content = %(content)s, updated_at = {BUMP_UPDATED_AT}"
                " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s"
                " AND status = 'streaming'",
                _step_params(message_id, workspace_id, content, parts),
            )
        )


class StampsReplicaClock(PgTurnStore):
    """MSG-5a: append_step and the sweep stamp updated_at from the replica's clock (kept
    moving forward), so a replica whose clock is wrong writes wrong times."""

    def _replica_now(self) -> datetime:
        return self.clock() if self.clock is not None else datetime.now(UTC)

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        return bool(
            await self._changed(
                "UPDATE messages SET content = %(content)s, parts = %(parts)s,"
                " updated_at = greatest(%(now)s, updated_at + interval '1 microsecond')"
                " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s"
                " AND status = 'streaming'",
                _step_params(message_id, workspace_id, content, parts)
                | {"now": self._replica_now()},
            )
        )

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            "UPDATE messages SET status = 'aborted',"
            " updated_at = greatest(%(now)s, updated_at + interval '1 microsecond')"
            " WHERE status = 'streaming' AND updated_at < now() - %(older_than)s",
            {"older_than": older_than, "now": self._replica_now()},
        )


class StepKeepsUpdatedAt(PgTurnStore):
    """MSG-5b: append_step writes the step but leaves updated_at where it was."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        return bool(
            await self._changed(
                "UPDATE messages SET content = %(content)s, parts = %(parts)s"
                " WHERE id = %(message_id)s AND workspace_id = %(workspace_id)s"
                " AND status = 'streaming'",
                _step_params(message_id, workspace_id, content, parts),
            )
        )


class FinalizeKeepsTextPartsOnly(PgTurnStore):
    """MSG-6a: finalize stores only the text parts it is given, dropping tool calls."""

    def _stored_parts(self, content: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return finished_parts(content, [p for p in parts if p.get("type") == "text"])


class FinalizeSparesAborted(PgTurnStore):
    """MSG-6b: finalize leaves a row a sweep aborted alone (and returns False)."""

    FINALIZE_SQL = _replace_once(
        PgTurnStore.FINALIZE_SQL,
        "AND workspace_id = %(workspace_id)s",
        "AND workspace_id = %(workspace_id)s AND status IS DISTINCT FROM 'aborted'",
    )


class FinalizeOnce(PgTurnStore):
    """MSG-6c: finalize leaves a completed or errored row alone: no second finalize."""

    FINALIZE_SQL = _replace_once(
        PgTurnStore.FINALIZE_SQL,
        "AND workspace_id = %(workspace_id)s",
        "AND workspace_id = %(workspace_id)s"
        " AND coalesce(status, 'streaming') NOT IN ('completed', 'error')",
    )


class FinalizeUncheckedStatus(PgTurnStore):
    """MSG-6d: finalize does not check the status: the schema's CHECK refuses most unknown
    ones with its own error, and 'streaming' is written."""

    def _check_status(self, status: str) -> None:
        pass


class FinalizeWithoutMarker(PgTurnStore):
    """MSG-7a: an empty finalize stores no parts at all, not the '(no text response)' part."""

    def _stored_parts(self, content: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return parts


class MarkerWheneverNoText(PgTurnStore):
    """MSG-7b: the '(no text response)' part is added whenever the content is empty, also
    to a finalize that has parts (tool calls)."""

    def _stored_parts(self, content: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return parts if content else [*parts, dict(NO_TEXT_PART)]


class FinalizeMissingRaises(PgTurnStore):
    """MSG-8a: finalize of a message it cannot find raises instead of returning False."""

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
        done = await super().finalize(
            message_id=message_id,
            workspace_id=workspace_id,
            status=status,
            content=content,
            parts=parts,
            usage=usage,
        )
        if not done:
            raise InvalidArgument(f"no message {message_id!r} in workspace {workspace_id!r}")
        return done


class UsageIgnoresWorkspace(PgTurnStore):
    """MSG-8b: finalize writes usage for the message id whatever the workspace, so a finalize
    under another workspace changes no message but writes usage."""

    FINALIZE_SQL = _replace_once(
        PgTurnStore.FINALIZE_SQL,
        "FROM upd WHERE %(with_usage)s",
        "FROM messages WHERE id = %(message_id)s AND %(with_usage)s",
    )


class CreatesMissingChat(PgTurnStore):
    """MSG-9a: a persist on a chat that does not exist creates the chat (an ORM's
    get-or-create) and writes the turn into it."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if turn["turn_id"]:
            await self._changed(
                "INSERT INTO chats (id, workspace_id) VALUES (%(chat_id)s, %(workspace_id)s)"
                " ON CONFLICT (id) DO NOTHING",
                {k: turn[k] for k in ("chat_id", "workspace_id")},
            )
        return await super()._persist_turn(**turn)


_TURN_IN_ANY_CHAT_SQL = _replace_once(
    _replace_once(INSERT_TURN_SQL, "SELECT id, workspace_id,", "SELECT id, %(workspace_id)s,"),
    " AND workspace_id = %(workspace_id)s",
    "",
)


class ChatOfAnyWorkspace(PgTurnStore):
    """MSG-9b: persist finds the chat by id alone, so a turn lands in another workspace's
    chat (under the caller's workspace id)."""

    async def _persist_turn(self, **turn: Any) -> str | None:
        if not turn["turn_id"]:
            return None
        params = turn_params(**turn)
        row = await self._one(
            _TURN_IN_ANY_CHAT_SQL + _ON_TURN_CONFLICT + " DO NOTHING RETURNING id", params
        )
        if row is None:
            row = await self._one(
                "SELECT id FROM messages WHERE chat_id = %(chat_id)s"
                " AND workspace_id = %(workspace_id)s AND turn_id = %(turn_id)s"
                " AND role = %(role)s",
                params,
            )
        return row["id"] if row else None


class UsageCheckThenInsert(PgTurnStore):
    """USG-1b (race only): no unique index on usage; finalize inserts usage when none exists
    yet, judged on its statement's snapshot, so two concurrent finalizes both insert."""

    FINALIZE_SQL = _replace_once(
        _replace_once(
            PgTurnStore.FINALIZE_SQL,
            "ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING",
            "",
        ),
        "FROM upd WHERE %(with_usage)s",
        "FROM upd WHERE %(with_usage)s"
        " AND NOT EXISTS (SELECT 1 FROM usage WHERE usage.message_id = upd.id)",
    )


class UsageOfTheChat(PgTurnStore):
    """USG-1c: usage_for returns the usage of every message of the message's chat."""

    async def usage_for(self, *, message_id: str) -> list[Usage]:
        rows = await self._all(
            f"SELECT {USAGE_COLUMNS} FROM usage WHERE message_id IN ("
            " SELECT id FROM messages WHERE chat_id ="
            " (SELECT chat_id FROM messages WHERE id = %(message_id)s))"
            " ORDER BY created_at, id",
            {"message_id": message_id},
        )
        return [usage_from_row(r) for r in rows]


new_id_on_repeat = BrokenVariant(NewIdOnRepeat, breaks=("MSG-1a",), channel="sequential")
last_text_wins = BrokenVariant(LastTextWins, breaks=("MSG-1d",), channel="sequential")
turn_key_without_chat = BrokenVariant(TurnKeyWithoutChat, breaks=("MSG-1e",), channel="sequential")
id_without_turn = BrokenVariant(IdWithoutTurn, breaks=("MSG-2a",), channel="sequential")
row_without_turn = BrokenVariant(RowWithoutTurn, breaks=("MSG-2b",), channel="sequential")
shell_with_placeholder = BrokenVariant(
    ShellWithPlaceholder, breaks=("MSG-3a",), channel="sequential"
)
shell_without_status = BrokenVariant(ShellWithoutStatus, breaks=("MSG-3b",), channel="sequential")
step_writes_content_only = BrokenVariant(
    StepWritesContentOnly, breaks=("MSG-4a",), channel="sequential"
)
stamps_replica_clock = BrokenVariant(StampsReplicaClock, breaks=("MSG-5a",), channel="skew")
step_keeps_updated_at = BrokenVariant(StepKeepsUpdatedAt, breaks=("MSG-5b",), channel="sequential")
finalize_keeps_text_parts_only = BrokenVariant(
    FinalizeKeepsTextPartsOnly, breaks=("MSG-6a",), channel="sequential"
)
finalize_spares_aborted = BrokenVariant(
    FinalizeSparesAborted, breaks=("MSG-6b",), channel="sequential"
)
finalize_once = BrokenVariant(FinalizeOnce, breaks=("MSG-6c",), channel="sequential")
finalize_unchecked_status = BrokenVariant(
    FinalizeUncheckedStatus, breaks=("MSG-6d",), channel="sequential"
)
finalize_without_marker = BrokenVariant(
    FinalizeWithoutMarker, breaks=("MSG-7a",), channel="sequential"
)
marker_whenever_no_text = BrokenVariant(
    MarkerWheneverNoText, breaks=("MSG-7b",), channel="sequential"
)
finalize_missing_raises = BrokenVariant(
    FinalizeMissingRaises, breaks=("MSG-8a",), channel="sequential"
)
usage_ignores_workspace = BrokenVariant(
    UsageIgnoresWorkspace, breaks=("MSG-8b",), channel="sequential"
)
creates_missing_chat = BrokenVariant(CreatesMissingChat, breaks=("MSG-9a",), channel="sequential")
chat_of_any_workspace = BrokenVariant(ChatOfAnyWorkspace, breaks=("MSG-9b",), channel="sequential")
usage_check_then_insert = BrokenVariant(
    UsageCheckThenInsert, breaks=("USG-1b",), channel="race", without_index="usage_one_per_message"
)
usage_of_the_chat = BrokenVariant(UsageOfTheChat, breaks=("USG-1c",), channel="sequential")


# --- MSG-10 -----------------------------------------------------------------------------------


def _rebuilt(value: Any, key: Any = None, leaf: Any = None) -> Any:
    """A JSON value rebuilt with every object key passed through `key` and every scalar
    through `leaf` (either left alone when None)."""
    if isinstance(value, dict):
        return {(key(k) if key else k): _rebuilt(v, key, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuilt(v, key, leaf) for v in value]
    return leaf(value) if leaf else value


class _RewritesReads(PgTurnStore):
    """Writes like the reference; get_message and list_messages pass every message read
    through `reread`, as a serialiser or ORM plugin between the store and its callers does."""

    def reread(self, message: Message) -> Message:
        raise NotImplementedError

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        message = await super().get_message(message_id=message_id, workspace_id=workspace_id)
        return None if message is None else self.reread(message)

    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]:
        rows = await super().list_messages(chat_id=chat_id, workspace_id=workspace_id)
        return [self.reread(m) for m in rows]


def _camel_case(key: str) -> str:
    return re.sub(r"(?<=[^_])_([a-z0-9])", lambda m: m.group(1).upper(), key)


class CamelCaseKeysOnRead(_RewritesReads):
    """MSG-10a: keys inside parts are camelCased on read (`file_path` comes back `filePath`),
    the bug of a real TypeScript application's ORM plugin."""

    def reread(self, message: Message) -> Message:
        return replace(message, parts=_rebuilt(message.parts, key=_camel_case))


def _through_a_double(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class NumbersThroughADouble(_RewritesReads):
    """MSG-10b: numbers in parts are read as doubles (JavaScript's JSON.parse), so an integer
    beyond 2^53 comes back rounded."""

    def reread(self, message: Message) -> Message:
        return replace(message, parts=_rebuilt(message.parts, leaf=_through_a_double))


def _nfc(value: Any) -> Any:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


class NormalisesText(_RewritesReads):
    """MSG-10c: content and string values in parts are NFC-normalised on read, so a
    decomposed `e` + combining accent comes back as the one character `é`."""

    def reread(self, message: Message) -> Message:
        return replace(
            message, content=_nfc(message.content), parts=_rebuilt(message.parts, leaf=_nfc)
        )


def _without_nul(value: Any) -> Any:
    return value.replace("\x00", "") if isinstance(value, str) else value


class StripsNul(PgTurnStore):
    """MSG-10d: NUL is stripped from every text and jsonb value before it is written, so a
    write PostgreSQL would refuse succeeds with altered text instead of InvalidArgument."""

    async def _execute(self, sql: str, params: dict[str, Any]) -> psycopg.AsyncCursor[DictRow]:
        stripped = {
            name: Jsonb(_rebuilt(value.obj, _without_nul, _without_nul))
            if isinstance(value, Jsonb)
            else _without_nul(value)
            for name, value in params.items()
        }
        return await super()._execute(sql, stripped)


camel_case_keys_on_read = BrokenVariant(
    CamelCaseKeysOnRead, breaks=("MSG-10a",), channel="sequential"
)
numbers_through_a_double = BrokenVariant(
    NumbersThroughADouble, breaks=("MSG-10b",), channel="sequential"
)
normalises_text = BrokenVariant(NormalisesText, breaks=("MSG-10c",), channel="sequential")
strips_nul = BrokenVariant(StripsNul, breaks=("MSG-10d",), channel="sequential")

# --- clause variants: runs, sweeps, workspaces, durability ------------------------------------

_STALE_STREAMING = "status = 'streaming' AND updated_at < now() - %(older_than)s"


def _app_now(store: PgTurnStore) -> datetime | None:
    """The replica's clock when it has one (the reference never reads it)."""
    return store.clock() if store.clock is not None else None


class SweepOneBatch(PgTurnStore):
    """SWP-1a: the sweep aborts one batch of stale rows (two, the oldest) and does not loop
    until none is left, so a third stale row stays streaming."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            f" WHERE id IN (SELECT id FROM messages WHERE {_STALE_STREAMING}"
            " ORDER BY updated_at LIMIT 2)",
            {"older_than": older_than},
        )


class SweepReportsWhetherItSwept(PgTurnStore):
    """SWP-1b: the sweep returns 1 when it changed anything, not how many rows it changed."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return int(await super().sweep_streaming(older_than=older_than) > 0)


sweep_one_batch = BrokenVariant(SweepOneBatch, breaks=("SWP-1a",), channel="sequential")
sweep_reports_whether_it_swept = BrokenVariant(
    SweepReportsWhetherItSwept, breaks=("SWP-1b",), channel="sequential"
)


class SweepAbortsErrors(PgTurnStore):
    """SWP-2b: the sweep takes a stale 'error' row for one still in flight and aborts it."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE status IN ('streaming', 'error') AND updated_at < now() - %(older_than)s",
            {"older_than": older_than},
        )


class SweepMemoizedByThreshold(PgTurnStore):
    """SWP-3a: the sweep's count is cached per threshold, so a second sweep with the same
    threshold returns the first one's count instead of 0."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow], *, clock: Clock | None) -> None:
        super().__init__(conn, clock=clock)
        self._swept: dict[timedelta, int] = {}

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        if older_than not in self._swept:
            self._swept[older_than] = await super().sweep_streaming(older_than=older_than)
        return self._swept[older_than]


sweep_aborts_errors = BrokenVariant(SweepAbortsErrors, breaks=("SWP-2b",), channel="sequential")
sweep_memoized_by_threshold = BrokenVariant(
    SweepMemoizedByThreshold, breaks=("SWP-3a",), channel="sequential"
)


class StepResumesAbortedRows(PgTurnStore):
    """SWP-4a (and MSG-4b): append_step takes an 'aborted' row as resumable and writes it
    back to streaming, so a step after a sweep revives the swept row."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        params = _step_params(message_id, workspace_id, content, parts)
        return bool(
            await self._changed(
                _replace_once(_UNGUARDED_STEP_SQL, "SET ", "SET status = 'streaming', ")
                + " AND status IN ('streaming', 'aborted')",
                params,
            )
        )


class SweepByCreatedAt(PgTurnStore):
    """SWP-4b: staleness is measured from when the turn began (created_at), so the steps
    that keep a long answer fresh do not save it from the sweep."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE status = 'streaming' AND created_at < now() - %(older_than)s",
            {"older_than": older_than},
        )


class SweepInTwoStatements(PgTurnStore):
    """SWP-4c (race only): the sweep selects the stale rows, then aborts them by id in a
    second statement without judging staleness again, so a step committing in between is
    aborted along with its row."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        stale = await self._all(
            f"SELECT id FROM messages WHERE {_STALE_STREAMING}", {"older_than": older_than}
        )
        if not stale:
            return 0
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            " WHERE id = ANY(%(ids)s) AND status = 'streaming'",
            {"ids": [row["id"] for row in stale]},
        )


step_resumes_aborted_rows = BrokenVariant(
    StepResumesAbortedRows, breaks=("SWP-4a", "MSG-4b"), channel="sequential"
)
sweep_by_created_at = BrokenVariant(SweepByCreatedAt, breaks=("SWP-4b",), channel="sequential")
sweep_in_two_statements = BrokenVariant(SweepInTwoStatements, breaks=("SWP-4c",), channel="race")


class SweepCutoffFromLaterClock(PgTurnStore):
    """SWP-5a (skew only): the cutoff is taken from the later of the database's clock and
    the replica's, so a replica whose clock runs ahead sweeps fresh rows."""

    EDGE = "greatest"

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            f" WHERE status = 'streaming' AND updated_at <"
            f" {self.EDGE}(now(), coalesce(%(app_now)s::timestamptz, now())) - %(older_than)s",
            {"older_than": older_than, "app_now": _app_now(self)},
        )


class SweepCutoffFromEarlierClock(SweepCutoffFromLaterClock):
    """SWP-5b (skew only): the cutoff is taken from the earlier of the two clocks, so a
    replica whose clock runs behind spares stale rows."""

    EDGE = "least"


sweep_cutoff_from_later_clock = BrokenVariant(
    SweepCutoffFromLaterClock, breaks=("SWP-5a",), channel="skew"
)
sweep_cutoff_from_earlier_clock = BrokenVariant(
    SweepCutoffFromEarlierClock, breaks=("SWP-5b",), channel="skew"
)


class BeginReturnsAppSideRun(PgTurnStore):
    """RUN-1a: begin_run returns the run stamped with the replica's time (an ORM object as
    built in the app), not the row the database stored."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        run = await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)
        now = datetime.now(UTC)
        return replace(run, created_at=now, updated_at=now)


class OneActiveRunPerWorkspace(PgTurnStore):
    """RUN-1d: begin_run refuses while any chat of the workspace has an active run."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        busy = await self._one(
            "SELECT 1 FROM runs WHERE workspace_id = %(workspace_id)s"
            " AND status IN ('pending', 'running')",
            {"workspace_id": workspace_id},
        )
        if busy is not None:
            raise RunAlreadyActive(chat_id)
        return await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)


begin_returns_app_side_run = BrokenVariant(
    BeginReturnsAppSideRun, breaks=("RUN-1a",), channel="sequential"
)
one_active_run_per_workspace = BrokenVariant(
    OneActiveRunPerWorkspace, breaks=("RUN-1d",), channel="sequential"
)


class BeginWritesGivenIds(PgTurnStore):
    """RUN-2a: begin_run inserts the chat and workspace ids it was given; the foreign key
    only proves the chat exists, so another workspace's chat gets a run."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        row = await self._one(
            "INSERT INTO runs (chat_id, workspace_id, status, trigger)"
            " VALUES (%(chat_id)s, %(workspace_id)s, 'running', %(trigger)s)"
            f" RETURNING {RUN_COLUMNS}",
            {"chat_id": chat_id, "workspace_id": workspace_id, "trigger": trigger},
        )
        assert row is not None
        return run_from_row(row)


class BeginChecksChatAfterInsert(BeginWritesGivenIds):
    """RUN-2a: begin_run inserts the run, then finds the chat is not this workspace's and
    raises InvalidArgument, leaving the run it wrote behind."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        run = await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)
        where = {"chat_id": chat_id, "workspace_id": workspace_id}
        if await self._one(
            "SELECT 1 FROM chats WHERE id = %(chat_id)s AND workspace_id = %(workspace_id)s", where
        ):
            return run
        raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")


class BeginBlamesLostConnections(PgTurnStore):
    """RUN-2b (race only): a begin whose connection died reports RunAlreadyActive."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        try:
            return await super().begin_run(
                chat_id=chat_id, workspace_id=workspace_id, trigger=trigger
            )
        except psycopg.OperationalError as exc:
            raise RunAlreadyActive(chat_id) from exc


begin_writes_given_ids = BrokenVariant(
    BeginWritesGivenIds, breaks=("RUN-2a",), channel="sequential"
)
begin_checks_chat_after_insert = BrokenVariant(
    BeginChecksChatAfterInsert, breaks=("RUN-2a",), channel="sequential"
)
begin_blames_lost_connections = BrokenVariant(
    BeginBlamesLostConnections, breaks=("RUN-2b",), channel="race"
)


class FinishStoresFailedAsAborted(PgTurnStore):
    """RUN-4a: finish_run maps 'failed' onto 'aborted' (an enum the app got wrong)."""

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        stored = "aborted" if status == "failed" else status
        return await super().finish_run(run_id=run_id, status=stored)


class FinishUnguarded(PgTurnStore):
    """RUN-4b: finish_run has no status guard: it rewrites a finished run and returns True."""

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        if status not in TERMINAL_RUN_STATUSES:
            raise InvalidArgument(f"finish_run status {status!r}")
        return bool(
            await self._changed(
                "UPDATE runs SET status = %(status)s, finished_at = now(), updated_at = now()"
                " WHERE id = %(run_id)s",
                {"run_id": run_id, "status": status},
            )
        )


class BeginRefusesAfterFailure(PgTurnStore):
    """RUN-4c: begin_run refuses a chat whose last run failed, as if it were still active."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        last = await super().latest_run(chat_id=chat_id, workspace_id=workspace_id)
        if last is not None and last.status == "failed":
            raise RunAlreadyActive(chat_id)
        return await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)


finish_stores_failed_as_aborted = BrokenVariant(
    FinishStoresFailedAsAborted, breaks=("RUN-4a",), channel="sequential"
)
finish_unguarded = BrokenVariant(FinishUnguarded, breaks=("RUN-4b",), channel="sequential")
begin_refuses_after_failure = BrokenVariant(
    BeginRefusesAfterFailure, breaks=("RUN-4c",), channel="sequential"
)


class StopEndsTheRun(PgTurnStore):
    """RUN-5a: request_stop aborts the run instead of flagging it for its owner."""

    async def request_stop(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET stop_requested = true, status = 'aborted', finished_at = now()"
                " WHERE id = %(run_id)s AND status IN ('pending', 'running')",
                {"run_id": run_id},
            )
        )


class StopOnTerminalRun(PgTurnStore):
    """RUN-5b: request_stop has no status guard: it flags a finished run and returns True."""

    async def request_stop(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET stop_requested = true WHERE id = %(run_id)s", {"run_id": run_id}
            )
        )


class CloseAbortsOwnRuns(PgTurnStore):
    """RUN-5c: a replica that disconnects aborts the runs it began (a clean-up on close)."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow], *, clock: Clock | None) -> None:
        super().__init__(conn, clock=clock)
        self._begun: list[str] = []

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        run = await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)
        self._begun.append(run.id)
        return run

    async def aclose(self) -> None:
        if self._begun and not self._conn.closed:
            await self._changed(
                "UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()"
                " WHERE id = ANY(%(ids)s) AND status IN ('pending', 'running')",
                {"ids": self._begun},
            )
        await super().aclose()


class StepClearsStop(PgTurnStore):
    """RUN-5d: record_step writes the run's flags afresh, clearing a stop request."""

    async def record_step(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET step_count = step_count + 1, updated_at = now(),"
                " stop_requested = false"
                " WHERE id = %(run_id)s AND status IN ('pending', 'running')",
                {"run_id": run_id},
            )
        )


class StopToggles(PgTurnStore):
    """RUN-5d: request_stop toggles the flag, so a second request takes the first back."""

    async def request_stop(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET stop_requested = NOT stop_requested"
                " WHERE id = %(run_id)s AND status IN ('pending', 'running')",
                {"run_id": run_id},
            )
        )


stop_ends_the_run = BrokenVariant(StopEndsTheRun, breaks=("RUN-5a",), channel="sequential")
stop_on_terminal_run = BrokenVariant(StopOnTerminalRun, breaks=("RUN-5b",), channel="sequential")
close_aborts_own_runs = BrokenVariant(CloseAbortsOwnRuns, breaks=("RUN-5c",), channel="sequential")
step_clears_stop = BrokenVariant(StepClearsStop, breaks=("RUN-5d",), channel="sequential")
stop_toggles = BrokenVariant(StopToggles, breaks=("RUN-5d",), channel="sequential")


class LinkWritesNothing(PgTurnStore):
    """RUN-6a: link_assistant finds the run and the message and returns True, but only
    refreshes the run: the link is never stored."""

    async def link_assistant(self, *, run_id: str, message_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET updated_at = now() FROM messages m"
                " WHERE runs.id = %(run_id)s AND m.id = %(message_id)s"
                " AND m.chat_id = runs.chat_id",
                {"run_id": run_id, "message_id": message_id},
            )
        )


class BeginStampsReplicaTime(PgTurnStore):
    """RUN-6b (skew only): begin_run stamps created_at with the replica's clock, and
    latest_run orders by it, so a run begun by a replica whose clock runs ahead stays the
    latest after a later one."""

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        run = await super().begin_run(chat_id=chat_id, workspace_id=workspace_id, trigger=trigger)
        row = await self._one(
            "UPDATE runs SET created_at = coalesce(%(app_now)s::timestamptz, created_at)"
            f" WHERE id = %(run_id)s RETURNING {RUN_COLUMNS}",
            {"run_id": run.id, "app_now": _app_now(self)},
        )
        assert row is not None
        return run_from_row(row)

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        return await _latest_run_ordered(self, chat_id, workspace_id, "created_at DESC, seq DESC")


class LatestRunByUpdatedAt(PgTurnStore):
    """RUN-6c: latest_run takes the run written last, so a late link to an older run
    makes it the latest again."""

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        return await _latest_run_ordered(self, chat_id, workspace_id, "updated_at DESC, seq DESC")


class LatestRunFallsBackToWorkspace(PgTurnStore):
    """RUN-6d: latest_run of a chat without runs falls back to the workspace's latest run
    (meant for a "resume anything" screen)."""

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        row = await self._one(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE workspace_id = %(workspace_id)s"
            " ORDER BY chat_id = %(chat_id)s DESC, seq DESC LIMIT 1",
            {"chat_id": chat_id, "workspace_id": workspace_id},
        )
        return run_from_row(row) if row else None


async def _latest_run_ordered(
    store: PgTurnStore, chat_id: str, workspace_id: str, order: str
) -> Run | None:
    """latest_run with another ORDER BY (one of the variants' constant fragments)."""
    row = await store._one(
        f"SELECT {RUN_COLUMNS} FROM runs"
        " WHERE chat_id = %(chat_id)s AND workspace_id = %(workspace_id)s"
        f" ORDER BY {order} LIMIT 1",
        {"chat_id": chat_id, "workspace_id": workspace_id},
    )
    return run_from_row(row) if row else None


link_writes_nothing = BrokenVariant(LinkWritesNothing, breaks=("RUN-6a",), channel="sequential")
begin_stamps_replica_time = BrokenVariant(
    BeginStampsReplicaTime, breaks=("RUN-6b",), channel="skew"
)
latest_run_by_updated_at = BrokenVariant(
    LatestRunByUpdatedAt, breaks=("RUN-6c",), channel="sequential"
)
latest_run_falls_back_to_workspace = BrokenVariant(
    LatestRunFallsBackToWorkspace, breaks=("RUN-6d",), channel="sequential"
)


class SweepRunsEndsFinishedRuns(PgTurnStore):
    """RUN-7a: sweep_runs aborts every stale run not aborted yet, finished ones included."""

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        return await self._changed(
            "UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()"
            " WHERE status <> 'aborted' AND updated_at < now() - %(older_than)s",
            {"older_than": older_than},
        )


class StepDoesNotRefreshRun(PgTurnStore):
    """RUN-7b: record_step counts the step but leaves updated_at, so a working run goes
    stale and is swept."""

    async def record_step(self, *, run_id: str) -> bool:
        return bool(
            await self._changed(
                "UPDATE runs SET step_count = step_count + 1"
                " WHERE id = %(run_id)s AND status IN ('pending', 'running')",
                {"run_id": run_id},
            )
        )


class RunSweepCutoffFromReplicaClock(PgTurnStore):
    """RUN-7c (skew only): sweep_runs takes its cutoff from the replica's clock."""

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        return await self._changed(
            "UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()"
            " WHERE status IN ('pending', 'running')"
            " AND updated_at < coalesce(%(app_now)s::timestamptz, now()) - %(older_than)s",
            {"older_than": older_than, "app_now": _app_now(self)},
        )


sweep_runs_ends_finished_runs = BrokenVariant(
    SweepRunsEndsFinishedRuns, breaks=("RUN-7a",), channel="sequential"
)
step_does_not_refresh_run = BrokenVariant(
    StepDoesNotRefreshRun, breaks=("RUN-7b",), channel="sequential"
)
run_sweep_cutoff_from_replica_clock = BrokenVariant(
    RunSweepCutoffFromReplicaClock, breaks=("RUN-7c",), channel="skew"
)


class GetMessageIgnoresWorkspace(PgTurnStore):
    """WS-1a: get_message looks the id up in every workspace."""

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = %(message_id)s",
            {"message_id": message_id},
        )
        return message_from_row(row) if row else None


class StepIgnoresWorkspace(PgTurnStore):
    """WS-1b: append_step guards the status but not the workspace."""

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        return bool(
            await self._changed(
                f"UPDATE messages SET content = %(content)s, parts = %(parts)s,"
                f" updated_at = {BUMP_UPDATED_AT}"
                " WHERE id = %(message_id)s AND status = 'streaming'",
                _step_params(message_id, workspace_id, content, parts),
            )
        )


get_message_ignores_workspace = BrokenVariant(
    GetMessageIgnoresWorkspace, breaks=("WS-1a",), channel="sequential"
)
step_ignores_workspace = BrokenVariant(
    StepIgnoresWorkspace, breaks=("WS-1b",), channel="sequential"
)


class StepCommittedByNextOperation(PgTurnStore):
    """DUR-1a (kill only): append_step runs in a transaction it leaves open and returns True;
    the writer's next operation commits it first. Its own reads see the step, and any next
    operation saves it: only a death right after the step loses it."""

    DEFERRED = "append_step"

    _pending = False

    async def _execute(self, sql: str, params: dict[str, Any]) -> psycopg.AsyncCursor[DictRow]:
        if self._pending:
            self._pending = False
            await self._conn.execute("COMMIT")
        return await super()._execute(sql, params)

    async def _left_open(self, write: Coroutine[Any, Any, bool]) -> bool:
        await self._execute("BEGIN", {})
        try:
            done = await write
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        self._pending = True
        return done

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        write = super().append_step(
            message_id=message_id, workspace_id=workspace_id, content=content, parts=parts
        )
        return await (self._left_open(write) if self.DEFERRED == "append_step" else write)

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
        write = super().finalize(
            message_id=message_id,
            workspace_id=workspace_id,
            status=status,
            content=content,
            parts=parts,
            usage=usage,
        )
        return await (self._left_open(write) if self.DEFERRED == "finalize" else write)

    async def aclose(self) -> None:
        if self._pending and not self._conn.closed:
            await self._conn.execute("COMMIT")
        await super().aclose()


class FinalizeCommittedByNextOperation(StepCommittedByNextOperation):
    """DUR-1b (kill only): the same for finalize: committed by the writer's next operation."""

    DEFERRED = "finalize"


class UnloggedUsage(BrokenVariant):
    """DUR-1c (server crash only): the usage table is UNLOGGED ("only metrics"), so a crash
    empties it: usage a finalize confirmed is gone after the restart."""

    async def install(self, dsn: str) -> None:
        await super().install(dsn)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("ALTER TABLE usage SET UNLOGGED")


class SweepSparesMessagesOfActiveRuns(PgTurnStore):
    """DUR-3b (kill only): sweep_streaming leaves a message whose run is still active to
    sweep_runs, so the dead writer's message stays streaming after both sweeps."""

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        return await self._changed(
            f"UPDATE messages SET status = 'aborted', updated_at = {BUMP_UPDATED_AT}"
            f" WHERE {_STALE_STREAMING} AND NOT EXISTS (SELECT 1 FROM runs"
            " WHERE runs.assistant_message_id = messages.id"
            " AND runs.status IN ('pending', 'running'))",
            {"older_than": older_than},
        )


step_committed_by_next_operation = BrokenVariant(
    StepCommittedByNextOperation, breaks=("DUR-1a",), channel="kill"
)
finalize_committed_by_next_operation = BrokenVariant(
    FinalizeCommittedByNextOperation, breaks=("DUR-1b",), channel="kill"
)
unlogged_usage = UnloggedUsage(
    PgTurnStore, breaks=("DUR-1c",), channel="restart", name="broken-unlogged-usage"
)
sweep_spares_messages_of_active_runs = BrokenVariant(
    SweepSparesMessagesOfActiveRuns, breaks=("DUR-3b",), channel="kill"
)


# --- the adapters the harness loads -------------------------------------------------------------

unguarded_step = BrokenVariant(UnguardedStep, breaks=("MSG-4b", "MSG-4c"), channel="sequential")
read_then_write_step = BrokenVariant(ReadThenWriteStep, breaks=("MSG-4c",), channel="race")
check_then_act_begin = BrokenVariant(
    CheckThenActBegin, breaks=("RUN-1c",), channel="race", without_index=ONE_ACTIVE_RUN_INDEX
)
begin_skips_claimed_chat = BrokenVariant(BeginSkipsClaimedChat, breaks=("RUN-3a",), channel="race")
begin_swallows_conflict = BrokenVariant(
    BeginSwallowsConflict, breaks=("RUN-1b", "RUN-1c"), channel="sequential"
)
begin_blames_everything = BrokenVariant(
    BeginBlamesEverything, breaks=("RUN-2a", "RUN-2b"), channel="sequential"
)
sweep_without_staleness = BrokenVariant(
    SweepWithoutStaleness, breaks=("SWP-2a",), channel="sequential"
)
sweep_touches_legacy = BrokenVariant(SweepTouchesLegacy, breaks=("SWP-2c",), channel="sequential")
check_then_insert_persist = BrokenVariant(
    CheckThenInsertPersist, breaks=("MSG-1c", "MSG-3c"), channel="race"
)
usage_last_writer_wins = BrokenVariant(
    UsageLastWriterWins, breaks=("USG-1a", "USG-1b"), channel="sequential"
)
finalize_in_two_statements = BrokenVariant(
    FinalizeInTwoStatements, breaks=("DUR-2a",), channel="kill"
)
steps_in_memory = BrokenVariant(StepsInMemory, breaks=("DUR-1a", "DUR-3a"), channel="kill")
swallows_lost_connections = BrokenVariant(
    SwallowsLostConnections, breaks=("DUR-4a",), channel="network"
)
insert_only_persist = BrokenVariant(InsertOnlyPersist, breaks=("DUR-4a",), channel="network")
begin_leaks_conflict = BrokenVariant(
    BeginLeaksConflict, breaks=("RUN-1b", "RUN-1c", "DUR-4a"), channel="sequential"
)
step_in_two_statements = BrokenVariant(StepInTwoStatements, breaks=("DUR-2a",), channel="network")
sweep_cutoff_from_send_time = BrokenVariant(
    SweepCutoffFromSendTime, breaks=("SWP-5b",), channel="network"
)
read_then_write_in_transaction = BrokenVariant(
    ReadThenWriteInTransaction, breaks=("MSG-4c",), channel="race"
)
check_then_insert_repeatable_read = BrokenVariant(
    CheckThenInsertRepeatableRead,
    breaks=("MSG-1b", "MSG-3c"),
    channel="race",
    without_index=ONE_ROW_PER_TURN_INDEX,
)
check_then_insert_serializable = BrokenVariant(
    CheckThenInsertSerializable,
    breaks=("MSG-1c", "MSG-3c"),
    channel="race",
    without_index=ONE_ROW_PER_TURN_INDEX,
)
