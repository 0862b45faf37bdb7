"""OrmTurnStore: the turn store written the way a Python web app writes persistence.

A session per operation from an `async_sessionmaker`, the ORM's mapped classes, and an
explicit transaction per operation that often holds several statements: look the chat
up, then INSERT ... ON CONFLICT, then COMMIT; load a row FOR UPDATE, change its
attributes, let the unit of work flush it, COMMIT. What keeps it correct under
concurrency, statement by statement:

- Row locks where the app reads before it writes: finalize, run updates (SELECT ... FOR
  UPDATE, so a concurrent writer waits and then sees the committed row).
- The status guard of a step and the staleness test of a sweep stay in the WHERE of one
  UPDATE: the database re-checks them against the row a concurrent commit left (MSG-4,
  SWP-4); the app never decides from a row it read earlier.
- Unique indexes decide the races of idempotent turns, single usage and the one active
  run; the app turns only that one index's violation into RunAlreadyActive.
- Every timestamp is the database's now(); `clock` is kept but never used (SWP-5).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import ColumnElement

from harness import InvalidArgument, Message, Run, RunAlreadyActive, Usage, UsageIn
from harness.contract import (
    ACTIVE_RUN_STATUSES,
    NO_TEXT_PART,
    TERMINAL_MESSAGE_STATUSES,
    TERMINAL_RUN_STATUSES,
    Clock,
)

from .models import ONE_ACTIVE_RUN, Chat, MessageRow, RunRow, UsageRow


def bumped(column: Any) -> ColumnElement[Any]:
    """A message's new updated_at: the database clock, and strictly later than before even
    when two writes share one now() (MSG-5)."""
    return func.greatest(func.now(), column + timedelta(microseconds=1))


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def refuse_nul(*values: Any) -> None:
    """PostgreSQL keeps no NUL in text or jsonb: refuse it, never alter it (MSG-10)."""
    if any(has_nul(v) for v in values):
        raise InvalidArgument("text and parts cannot contain NUL (\\u0000)")


def as_message(row: MessageRow) -> Message:
    return Message(
        id=row.id,
        chat_id=row.chat_id,
        workspace_id=row.workspace_id,
        role=row.role,
        turn_id=row.turn_id,
        status=row.status,
        content=row.content,
        parts=row.parts,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def as_run(row: RunRow) -> Run:
    return Run(
        id=row.id,
        chat_id=row.chat_id,
        workspace_id=row.workspace_id,
        status=row.status,
        trigger=row.trigger,
        assistant_message_id=row.assistant_message_id,
        step_count=row.step_count,
        stop_requested=row.stop_requested,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def as_usage(row: UsageRow) -> Usage:
    return Usage(
        message_id=row.message_id,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        cost_micros=row.cost_micros,
        model=row.model,
        created_at=row.created_at,
    )


class OrmTurnStore:
    """One replica: an engine (its own pool, every connection opened with the DSN as given)
    and a session factory."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.clock = clock

    async def aclose(self) -> None:
        await self._engine.dispose()

    async def _chat_in(self, session: AsyncSession, chat_id: str, workspace_id: str) -> bool:
        found = await session.scalar(
            select(Chat.id).where(Chat.id == chat_id, Chat.workspace_id == workspace_id)
        )
        return found is not None

    # --- set-up ---------------------------------------------------------------------------

    async def create_chat(self, *, workspace_id: str) -> str:
        async with self._sessions() as session, session.begin():
            chat = Chat(workspace_id=workspace_id)
            session.add(chat)
        return chat.id

    async def insert_legacy_message(self, *, chat_id: str, workspace_id: str, content: str) -> str:
        async with self._sessions() as session, session.begin():
            if not await self._chat_in(session, chat_id, workspace_id):
                raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
            row = MessageRow(
                chat_id=chat_id,
                workspace_id=workspace_id,
                role="assistant",
                status=None,
                content=content,
                parts=[{"type": "text", "text": content}],
            )
            session.add(row)
        return row.id

    # --- messages -------------------------------------------------------------------------

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None:
        refuse_nul(text)
        return await self._persist_turn(
            chat_id,
            workspace_id,
            turn_id,
            "user",
            "completed",
            text,
            [{"type": "text", "text": text}],
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
        """The turn's row, once (MSG-1, MSG-3): the chat looked up in this workspace (MSG-9),
        then INSERT ... ON CONFLICT DO NOTHING, whose duplicate waits for the first writer's
        commit and then does nothing; then the winner's id, read in a new snapshot."""
        if not turn_id:
            return None  # no idempotency key, no row (MSG-2)
        async with self._sessions() as session, session.begin():
            if not await self._chat_in(session, chat_id, workspace_id):
                return None
            inserted = await session.scalar(
                insert(MessageRow)
                .values(
                    chat_id=chat_id,
                    workspace_id=workspace_id,
                    role=role,
                    turn_id=turn_id,
                    status=status,
                    content=content,
                    parts=parts,
                )
                .on_conflict_do_nothing(
                    index_elements=["chat_id", "turn_id", "role"],
                    index_where=MessageRow.turn_id.is_not(None),
                )
                .returning(MessageRow.id)
            )
            if inserted is not None:
                return inserted
            return await session.scalar(
                select(MessageRow.id).where(
                    MessageRow.chat_id == chat_id,
                    MessageRow.turn_id == turn_id,
                    MessageRow.role == role,
                )
            )

    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool:
        """The answer so far, only while the row is streaming: the guard is in the UPDATE's
        WHERE, so a finalize or sweep that commits first makes it match nothing (MSG-4)."""
        refuse_nul(content, parts)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(MessageRow)
                .where(
                    MessageRow.id == message_id,
                    MessageRow.workspace_id == workspace_id,
                    MessageRow.status == "streaming",
                )
                .values(content=content, parts=parts, updated_at=bumped(MessageRow.updated_at))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

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
        """Load the row FOR UPDATE, overwrite it whatever its status (MSG-6), add the usage
        unless the message has one (USG-1), commit both at once (DUR-2)."""
        if status not in TERMINAL_MESSAGE_STATUSES:
            raise InvalidArgument(
                f"finalize status must be one of {TERMINAL_MESSAGE_STATUSES}, not {status!r}"
            )
        refuse_nul(content, parts)
        async with self._sessions() as session, session.begin():
            row = await session.scalar(
                select(MessageRow)
                .where(MessageRow.id == message_id, MessageRow.workspace_id == workspace_id)
                .with_for_update()
            )
            if row is None:
                return False  # no such message here, and so no usage either (MSG-8)
            row.status = status
            row.content = content
            row.parts = parts if content or parts else [dict(NO_TEXT_PART)]  # MSG-7
            row.updated_at = bumped(MessageRow.updated_at)
            if usage is not None:
                await session.execute(
                    insert(UsageRow)
                    .values(message_id=row.id, **asdict(usage))
                    .on_conflict_do_nothing(index_elements=["message_id"])
                )
        return True

    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(MessageRow).where(
                    MessageRow.id == message_id, MessageRow.workspace_id == workspace_id
                )
            )
            return as_message(row) if row else None

    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(MessageRow)
                .where(MessageRow.chat_id == chat_id, MessageRow.workspace_id == workspace_id)
                .order_by(MessageRow.created_at, MessageRow.id)
            )
            return [as_message(r) for r in rows]

    async def usage_for(self, *, message_id: str) -> list[Usage]:
        async with self._sessions() as session:
            rows = await session.scalars(select(UsageRow).where(UsageRow.message_id == message_id))
            return [as_usage(r) for r in rows]

    async def sweep_streaming(self, *, older_than: timedelta) -> int:
        """One UPDATE: a step that commits first makes its row fresh, and the sweep's WHERE,
        re-checked on that row, spares it (SWP-4); staleness by the database clock (SWP-5)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(MessageRow)
                .where(
                    MessageRow.status == "streaming",
                    MessageRow.updated_at < func.now() - older_than,
                )
                .values(status="aborted", updated_at=bumped(MessageRow.updated_at))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount

    # --- runs -----------------------------------------------------------------------------

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run:
        """The chat looked up in this workspace, then the run inserted; the partial unique
        index decides a race (RUN-1), and a winner that rolls back lets the waiter in (RUN-3).
        Only that index's violation is RunAlreadyActive (RUN-2)."""
        async with self._sessions() as session, session.begin():
            if not await self._chat_in(session, chat_id, workspace_id):
                raise InvalidArgument(f"no chat {chat_id!r} in workspace {workspace_id!r}")
            run = RunRow(
                chat_id=chat_id, workspace_id=workspace_id, status="running", trigger=trigger
            )
            session.add(run)
            try:
                await session.flush()
            except IntegrityError as exc:
                if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == (
                    ONE_ACTIVE_RUN
                ):
                    raise RunAlreadyActive(chat_id) from exc
                raise
            return as_run(run)

    async def _update_active_run(self, run_id: str, change: dict[str, Any]) -> bool:
        """Load the run FOR UPDATE and apply `change` if it is still active; the row lock
        makes a concurrent finish or sweep wait, or be seen (RUN-4, RUN-5, RUN-7)."""
        async with self._sessions() as session, session.begin():
            run = await session.scalar(select(RunRow).where(RunRow.id == run_id).with_for_update())
            if run is None or run.status not in ACTIVE_RUN_STATUSES:
                return False
            for name, value in change.items():
                setattr(run, name, value)
            return True

    async def link_assistant(self, *, run_id: str, message_id: str) -> bool:
        """Point the run at its assistant message, only a message of the run's own chat."""
        async with self._sessions() as session, session.begin():
            run = await session.scalar(select(RunRow).where(RunRow.id == run_id).with_for_update())
            if run is None:
                return False
            in_chat = await session.scalar(
                select(MessageRow.id).where(
                    MessageRow.id == message_id, MessageRow.chat_id == run.chat_id
                )
            )
            if in_chat is None:
                return False
            run.assistant_message_id = message_id
            run.updated_at = func.now()
            return True

    async def record_step(self, *, run_id: str) -> bool:
        """Count a step and refresh the run, which keeps it from being swept (RUN-7)."""
        return await self._update_active_run(
            run_id, {"step_count": RunRow.step_count + 1, "updated_at": func.now()}
        )

    async def finish_run(self, *, run_id: str, status: str) -> bool:
        if status not in TERMINAL_RUN_STATUSES:
            raise InvalidArgument(
                f"finish_run status must be one of {TERMINAL_RUN_STATUSES}, not {status!r}"
            )
        now = func.now()
        return await self._update_active_run(
            run_id, {"status": status, "finished_at": now, "updated_at": now}
        )

    async def request_stop(self, *, run_id: str) -> bool:
        """Flag an active run; updated_at is its owner's heartbeat, so it stays (RUN-5)."""
        return await self._update_active_run(run_id, {"stop_requested": True})

    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None:
        async with self._sessions() as session:
            run = await session.scalar(
                select(RunRow)
                .where(RunRow.chat_id == chat_id, RunRow.workspace_id == workspace_id)
                .order_by(RunRow.seq.desc())
                .limit(1)
            )
            return as_run(run) if run else None

    async def sweep_runs(self, *, older_than: timedelta) -> int:
        """One UPDATE, re-checked on a row a concurrent record_step refreshed (RUN-7)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(RunRow)
                .where(
                    RunRow.status.in_(ACTIVE_RUN_STATUSES),
                    RunRow.updated_at < func.now() - older_than,
                )
                .values(status="aborted", finished_at=func.now(), updated_at=func.now())
                .execution_options(synchronize_session=False)
            )
            return result.rowcount
