"""The fixed Python interface of the durable turn store (shared CONTRACT.md).

Every implementation under test is reached through these names only; the
scenarios never see anything else. Extra dataclass fields carry defaults so
that adapters written against the contract keep constructing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import anyio

MESSAGE_STATUSES = ("streaming", "completed", "error", "aborted")
TERMINAL_MESSAGE_STATUSES = ("completed", "error", "aborted")
ACTIVE_RUN_STATUSES = ("pending", "running")
TERMINAL_RUN_STATUSES = ("succeeded", "failed", "aborted")
NO_TEXT_PART: dict[str, str] = {"type": "status", "text": "(no text response)"}

Clock = Callable[[], datetime]


class InvalidArgument(ValueError):
    """An argument the contract rejects (an unknown status, say); nothing was written."""


class RunAlreadyActive(Exception):
    """`begin_run` lost to the one-active-run-per-chat rule, and only to that rule."""

    def __init__(self, chat_id: str, message: str | None = None) -> None:
        super().__init__(message or f"chat {chat_id!r} already has an active run")
        self.chat_id = chat_id


@dataclass(frozen=True)
class Message:
    id: str
    chat_id: str
    workspace_id: str
    role: str
    turn_id: str | None
    status: str | None
    content: str
    parts: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class UsageIn:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int
    model: str


@dataclass(frozen=True)
class Usage:
    message_id: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int
    model: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class Run:
    id: str
    chat_id: str
    workspace_id: str
    status: str
    trigger: str
    assistant_message_id: str | None
    step_count: int
    stop_requested: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class Timers(Protocol):
    """Where a streaming writer's debounce window comes from. Scenarios pass a virtual clock
    (harness.virtual_time) so that "within the window" and "after it" are theirs to decide.
    A window's end is fixed when it is armed (`now() + debounce`), not when a task gets
    round to waiting for it."""

    def now(self) -> float: ...
    async def sleep_until(self, deadline: float) -> None: ...


class RealTimers:
    """Real time: the timers of a writer given none."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)


@runtime_checkable
class StreamWriter(Protocol):
    """The write-behind layer of capability `coalescing` (CW-1 .. CW-7).

    Parts conventions it relies on (CW-2): a `tool-call` part is named by its `toolCallId`
    and a `tool-call` or `reasoning` part is finished when it has `"finished": true`.
    `aclose` writes what is pending first. A writer may keep its timers in a task group
    entered when it was opened (structured concurrency): open and close it in one task.
    """

    async def update(
        self, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> None: ...
    async def flush(self, message_id: str) -> None: ...
    async def flush_all(self) -> None: ...
    async def delete(self, message_id: str, workspace_id: str) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class TurnStore(Protocol):
    """One replica's view of the store: its own connection(s) to the database."""

    async def aclose(self) -> None: ...

    async def create_chat(self, *, workspace_id: str) -> str: ...
    async def insert_legacy_message(
        self, *, chat_id: str, workspace_id: str, content: str
    ) -> str: ...

    async def persist_user_turn(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None, text: str
    ) -> str | None: ...
    async def persist_assistant_shell(
        self, *, chat_id: str, workspace_id: str, turn_id: str | None
    ) -> str | None: ...
    async def append_step(
        self, *, message_id: str, workspace_id: str, content: str, parts: list[dict[str, Any]]
    ) -> bool: ...
    async def finalize(
        self,
        *,
        message_id: str,
        workspace_id: str,
        status: str,
        content: str,
        parts: list[dict[str, Any]],
        usage: UsageIn | None,
    ) -> bool: ...
    async def get_message(self, *, message_id: str, workspace_id: str) -> Message | None: ...
    async def list_messages(self, *, chat_id: str, workspace_id: str) -> list[Message]: ...
    async def usage_for(self, *, message_id: str) -> list[Usage]: ...
    async def sweep_streaming(self, *, older_than: timedelta) -> int: ...

    async def begin_run(self, *, chat_id: str, workspace_id: str, trigger: str = "user") -> Run: ...
    async def link_assistant(self, *, run_id: str, message_id: str) -> bool: ...
    async def record_step(self, *, run_id: str) -> bool: ...
    async def finish_run(self, *, run_id: str, status: str) -> bool: ...
    async def request_stop(self, *, run_id: str) -> bool: ...
    async def latest_run(self, *, chat_id: str, workspace_id: str) -> Run | None: ...
    async def sweep_runs(self, *, older_than: timedelta) -> int: ...

    async def writer(self, debounce: timedelta, *, timers: Timers | None = None) -> StreamWriter:
        """A streaming writer on this store (capability `coalescing` only: stores of adapters
        that do not declare it need not have this operation). `timers` is where its debounce
        window comes from; None means real time."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """What the harness loads: a name, declared capabilities, install and connect."""

    name: str
    capabilities: frozenset[str]

    async def install(self, dsn: str) -> None: ...
    async def connect(self, dsn: str, *, clock: Clock | None = None) -> TurnStore: ...


CAPABILITY_OPERATIONS: dict[str, str] = {"writer": "coalescing"}
"""Operations only the stores of adapters declaring a capability have, and that capability."""

STORE_OPERATIONS: tuple[str, ...] = tuple(
    name
    for name in TurnStore.__dict__
    if not name.startswith("_") and name != "aclose" and name not in CAPABILITY_OPERATIONS
)
"""Every operation every store has, in declaration order (the driver protocol uses them)."""

WRITER_OPERATIONS: tuple[str, ...] = tuple(
    name for name in StreamWriter.__dict__ if not name.startswith("_") and name != "aclose"
)
"""The operations of a StreamWriter, in declaration order."""
