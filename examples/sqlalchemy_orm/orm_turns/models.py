"""The ORM's models: four mapped classes, and the constraints the contract asks the
database itself to enforce (the app's checks come and go; an index holds under any race).

- one row per (chat, turn_id, role): the target of the persist operations' ON CONFLICT;
- one usage row per message: the target of finalize's ON CONFLICT;
- one active run per chat: a partial unique index whose name identifies RunAlreadyActive.

Timestamps default to the database clock (`now()`), never to the app's.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ONE_ACTIVE_RUN = "orm_runs_one_active_per_chat"
ACTIVE = text("status IN ('pending', 'running')")


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}
    # Server-made values (timestamps, seq) come back in the INSERT's RETURNING.
    __mapper_args__ = {"eager_defaults": True}


class Chat(Base):
    __tablename__ = "orm_chats"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MessageRow(Base):
    __tablename__ = "orm_messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant')", name="orm_messages_role"),
        Index(
            "orm_messages_one_per_turn",
            "chat_id",
            "turn_id",
            "role",
            unique=True,
            postgresql_where=text("turn_id IS NOT NULL"),
        ),
        Index("orm_messages_by_chat", "chat_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    chat_id: Mapped[str] = mapped_column(ForeignKey("orm_chats.id"))
    workspace_id: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    turn_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)  # None: a legacy row
    content: Mapped[str] = mapped_column(Text, default="")
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class UsageRow(Base):
    __tablename__ = "orm_usage"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("orm_messages.id"), unique=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class RunRow(Base):
    __tablename__ = "orm_runs"
    __table_args__ = (
        Index(ONE_ACTIVE_RUN, "chat_id", unique=True, postgresql_where=ACTIVE),
        Index("orm_runs_by_chat", "chat_id", "seq"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    # Begun-last order: two runs may share a created_at (one transaction's now()).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    chat_id: Mapped[str] = mapped_column(ForeignKey("orm_chats.id"))
    workspace_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(Text)
    assistant_message_id: Mapped[str | None] = mapped_column(ForeignKey("orm_messages.id"))
    step_count: Mapped[int] = mapped_column(default=0)
    stop_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
