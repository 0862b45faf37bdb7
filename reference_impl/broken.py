"""Deliberately broken variants of the reference store, one bug each.

They exist to prove the suite catches each bug class: every variant below
breaks exactly one requirement (named in its docstring) and is otherwise the
reference, so a run against it must fail that requirement's scenarios. Some
bugs show up in any sequential test; others only under a race, a cut
connection or a killed writer, which is the point: they show that the
concurrency and fault scenarios catch what a sequential suite cannot.

Load one as `reference_impl.broken:<attribute>`, e.g. `reference_impl.broken:unguarded_step`.
Never use them for anything else.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from harness.contract import Clock, Message, Run, RunAlreadyActive, UsageIn
from reference_impl import schema
from reference_impl.adapter import ReferenceAdapter
from reference_impl.schema import ONE_ACTIVE_RUN_INDEX, ONE_ROW_PER_TURN_INDEX
from reference_impl.store import (
    BUMP_UPDATED_AT,
    INSERT_TURN_SQL,
    PgTurnStore,
    check_message_status,
    finished_parts,
    turn_params,
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
        if not turn_id:
            return None
        params = turn_params(chat_id, workspace_id, turn_id, role, status, content, parts)
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


class _WithoutIndex(ReferenceAdapter):
    """Installs the reference schema minus one index, which the variant's bug needs gone."""

    def __init__(self, *, index: str, name: str, store_class: type[PgTurnStore]) -> None:
        super().__init__(name=name, store_class=store_class)
        self.index = index

    async def install(self, dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:  # commits on exit
            for statement in schema.ddl():
                if self.index not in statement:
                    await conn.execute(statement)
            await conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.index))
            )


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
        if not turn_id:
            return None
        row = await self._one(
            INSERT_TURN_SQL + " RETURNING id",
            turn_params(chat_id, workspace_id, turn_id, role, status, content, parts),
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
        if not turn_id:
            return None
        params = turn_params(chat_id, workspace_id, turn_id, role, status, content, parts)
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


# --- the adapters the harness loads -------------------------------------------------------------

unguarded_step = ReferenceAdapter(name="broken-unguarded-step", store_class=UnguardedStep)
read_then_write_step = ReferenceAdapter(
    name="broken-read-then-write-step", store_class=ReadThenWriteStep
)
check_then_act_begin = _WithoutIndex(
    index=ONE_ACTIVE_RUN_INDEX, name="broken-check-then-act-begin", store_class=CheckThenActBegin
)
begin_skips_claimed_chat = ReferenceAdapter(
    name="broken-begin-skips-claimed-chat", store_class=BeginSkipsClaimedChat
)
begin_swallows_conflict = ReferenceAdapter(
    name="broken-begin-swallows-conflict", store_class=BeginSwallowsConflict
)
begin_blames_everything = ReferenceAdapter(
    name="broken-begin-blames-everything", store_class=BeginBlamesEverything
)
sweep_without_staleness = ReferenceAdapter(
    name="broken-sweep-without-staleness", store_class=SweepWithoutStaleness
)
sweep_touches_legacy = ReferenceAdapter(
    name="broken-sweep-touches-legacy", store_class=SweepTouchesLegacy
)
check_then_insert_persist = ReferenceAdapter(
    name="broken-check-then-insert-persist", store_class=CheckThenInsertPersist
)
usage_last_writer_wins = ReferenceAdapter(
    name="broken-usage-last-writer-wins", store_class=UsageLastWriterWins
)
finalize_in_two_statements = ReferenceAdapter(
    name="broken-finalize-in-two-statements", store_class=FinalizeInTwoStatements
)
steps_in_memory = ReferenceAdapter(name="broken-steps-in-memory", store_class=StepsInMemory)

swallows_lost_connections = ReferenceAdapter(
    name="broken-swallows-lost-connections", store_class=SwallowsLostConnections
)
insert_only_persist = ReferenceAdapter(
    name="broken-insert-only-persist", store_class=InsertOnlyPersist
)
begin_leaks_conflict = ReferenceAdapter(
    name="broken-begin-leaks-conflict", store_class=BeginLeaksConflict
)
step_in_two_statements = ReferenceAdapter(
    name="broken-step-in-two-statements", store_class=StepInTwoStatements
)
sweep_cutoff_from_send_time = ReferenceAdapter(
    name="broken-sweep-cutoff-from-send-time", store_class=SweepCutoffFromSendTime
)

read_then_write_in_transaction = ReferenceAdapter(
    name="broken-read-then-write-in-transaction", store_class=ReadThenWriteInTransaction
)
check_then_insert_repeatable_read = _WithoutIndex(
    index=ONE_ROW_PER_TURN_INDEX,
    name="broken-check-then-insert-repeatable-read",
    store_class=CheckThenInsertRepeatableRead,
)
check_then_insert_serializable = _WithoutIndex(
    index=ONE_ROW_PER_TURN_INDEX,
    name="broken-check-then-insert-serializable",
    store_class=CheckThenInsertSerializable,
)
