"""Helpers shared by the scenario modules, written only against the contract's interface."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from hypothesis import strategies as st

from harness import Message, RunAlreadyActive, TurnStore, Usage, UsageIn
from harness.contract import (
    ACTIVE_RUN_STATUSES,
    NO_TEXT_PART,
    TERMINAL_MESSAGE_STATUSES,
    TERMINAL_RUN_STATUSES,
)
from harness.db_clock import DatabaseClock
from harness.errors import ScenarioPremiseError
from harness.race import Exploration, Op, Race, RaceEngine, RaceOutcome, given

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "FINAL",
    "GAP_ATTEMPTS",
    "NO_TEXT_PART",
    "RACE_GAP",
    "RACE_WS",
    "SKEW",
    "STALE_ONLY",
    "STEPS",
    "SWEEP_GAP",
    "TERMINAL_MESSAGE_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "USAGE_A",
    "USAGE_B",
    "ConfirmedWrites",
    "KillableStore",
    "SweepPremise",
    "Turn",
    "a_chat",
    "append_steps",
    "assert_not_run_already_active",
    "assistant_row",
    "begin_failure",
    "describe_error",
    "describe_message",
    "existing_message",
    "explore_stale",
    "finalize_op",
    "is_empty_parts",
    "missing_id_like",
    "new_turn_id",
    "new_workspace",
    "race_gap",
    "race_premise",
    "raised_by",
    "skewed_clock",
    "step_op",
    "streaming_message",
    "streaming_turn",
    "sweep_premise",
    "text_parts",
    "usage_values",
    "user_row",
]

STALE_ONLY = timedelta(milliseconds=10)
"""The threshold of scenarios in which every row a sweep judges must be stale: written
before `db_clock.let_pass(STALE_ONLY)`, each is older than it by the database's own clock
(the rows' now() precedes the wait's first clock_timestamp()), however small it is. Small
keeps the wait short; the database clock, not the threshold, makes it exact."""

SWEEP_GAP = timedelta(milliseconds=100)
"""The database-clock gap between the stale rows and the fresh ones of a sweep scenario
(first attempt, `sweep_premise`). The threshold is chosen inside the gap when the sweep is
called, so only the sweep call itself has to end within the gap; the reference's takes a few
milliseconds, an ORM's on a loaded 2-core machine tens."""

RACE_GAP = timedelta(milliseconds=250)
"""The same gap in the sweep races (first attempt, `explore_stale`). There the threshold is
fixed in the set-up, so each interleaving has to end within the gap after its fresh row was
written: about 30 ms for the reference, seldom over 100 ms on a loaded 2-core machine."""

GAP_ATTEMPTS = 3
"""Attempts at a staleness premise, the gap doubled each time: a machine stall that broke
the premise gets a wider gap, not a premise error at once."""

THRESHOLD_MARGIN = timedelta(milliseconds=1)
"""How much younger than the newest stale row a chosen threshold is, so that row is
strictly older on the database clock, far above its microsecond resolution."""

SKEW = timedelta(minutes=10)
"""How far a skewed replica's app clock runs ahead of (or behind) real time."""

USAGE_A = UsageIn(
    prompt_tokens=100, completion_tokens=50, total_tokens=150, cost_micros=12_345, model="model-a"
)
USAGE_B = UsageIn(
    prompt_tokens=999,
    completion_tokens=999,
    total_tokens=1_998,
    cost_micros=99_999,
    model="model-b",
)


def new_workspace() -> str:
    """A workspace id no other test uses."""
    return str(uuid.uuid4())


def new_turn_id() -> str:
    """A client turn id (the idempotency key) no other turn uses."""
    return f"turn-{uuid.uuid4()}"


def missing_id_like(real_id: str) -> str:
    """An id shaped like `real_id` (digits stay digits, UUIDs stay UUIDs) that names nothing."""
    if real_id.isdigit():
        return str(int(real_id) + 1_000_000_007)
    try:
        uuid.UUID(real_id)
    except ValueError:
        return f"{real_id}-missing-{uuid.uuid4().hex[:8]}"
    return str(uuid.uuid4())


def skewed_clock(offset: timedelta) -> Callable[[], datetime]:
    """An app clock running `offset` away from real time (a replica whose clock is wrong)."""
    return lambda: datetime.now(UTC) + offset


def text_parts(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def is_empty_parts(parts: list[dict[str, Any]]) -> bool:
    """Parts of a row with no text yet: none at all, or only empty text parts."""
    return all(p.get("type") == "text" and p.get("text") == "" for p in parts)


def usage_values(usage: Usage | UsageIn) -> tuple[int, int, int, int, str]:
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cost_micros,
        usage.model,
    )


@dataclass(frozen=True)
class Turn:
    """One chat turn set up for a scenario: its chat, user row and streaming assistant row."""

    workspace_id: str
    chat_id: str
    turn_id: str
    user_message_id: str
    assistant_message_id: str


async def streaming_turn(
    store: TurnStore,
    *,
    workspace_id: str | None = None,
    chat_id: str | None = None,
    text: str = "hello",
) -> Turn:
    """Create (or reuse) a chat, persist a user turn and its assistant shell, still streaming."""
    workspace_id = workspace_id or new_workspace()
    if chat_id is None:
        chat_id = await store.create_chat(workspace_id=workspace_id)
    turn_id = new_turn_id()
    user_id = await store.persist_user_turn(
        chat_id=chat_id, workspace_id=workspace_id, turn_id=turn_id, text=text
    )
    assistant_id = await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=workspace_id, turn_id=turn_id
    )
    assert user_id is not None, (
        f"set-up: persist_user_turn of new turn {turn_id!r} in chat {chat_id!r} of its own "
        "workspace returned None; expected the new row's id"
    )
    assert assistant_id is not None, (
        f"set-up: persist_assistant_shell of new turn {turn_id!r} in chat {chat_id!r} of its "
        "own workspace returned None; expected the new row's id"
    )
    return Turn(workspace_id, chat_id, turn_id, user_id, assistant_id)


async def begin_failure(store: TurnStore, *, chat_id: str, workspace_id: str) -> Exception:
    """The error `begin_run` raises here; fails the scenario if it starts a run instead."""
    try:
        run = await store.begin_run(chat_id=chat_id, workspace_id=workspace_id)
    except Exception as exc:
        return exc
    raise AssertionError(
        f"begin_run(chat_id={chat_id!r}, workspace_id={workspace_id!r}) started run {run.id!r} "
        "where it had to fail"
    )


E = TypeVar("E", bound=BaseException)


async def raised_by(expected: type[E], call: Awaitable[object], what: str) -> E:
    """The error `call` must raise; a failure saying what it returned instead (any other
    error propagates as it is)."""
    try:
        result = await call
    except expected as exc:
        return exc
    raise AssertionError(
        f"expected {what} to raise {expected.__name__}, but it returned {result!r}"
    )


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


def assert_not_run_already_active(exc: Exception, why: str) -> None:
    assert not isinstance(exc, RunAlreadyActive), (
        f"begin_run failed because {why}, but reported RunAlreadyActive "
        f"({describe_error(exc)}); only the one-active-run conflict may be reported that way"
    )


RACE_WS = "workspace-race"
"""The workspace of race scenarios: each interleaving has a database of its own."""


def step_op(content: str, message: str = "message_id") -> Op:
    """A race actor's append_step of `content` to the message the setup named `message`."""
    return Op(
        "append_step",
        message_id=given(message),
        workspace_id=RACE_WS,
        content=content,
        parts=text_parts(content),
    )


def finalize_op(content: str, usage: UsageIn | None, message: str = "message_id") -> Op:
    """A race actor's finalize to 'completed' with `content` and `usage`."""
    return Op(
        "finalize",
        message_id=given(message),
        workspace_id=RACE_WS,
        status="completed",
        content=content,
        parts=text_parts(content),
        usage=usage,
    )


async def existing_message(
    store: TurnStore, message_id: str, workspace_id: str, what: str = "message"
) -> Message:
    """A message that must exist: read in its own workspace, where get_message must find it."""
    found = await store.get_message(message_id=message_id, workspace_id=workspace_id)
    assert found is not None, (
        f"expected the {what} {message_id!r} written earlier, but get_message in its own "
        f"workspace {workspace_id!r} found nothing"
    )
    return found


async def assistant_row(store: TurnStore, turn: Turn) -> Message:
    """The turn's assistant message, which must exist."""
    return await existing_message(
        store, turn.assistant_message_id, turn.workspace_id, "assistant message"
    )


async def user_row(store: TurnStore, turn: Turn) -> Message:
    """The turn's user message, which must exist."""
    return await existing_message(store, turn.user_message_id, turn.workspace_id, "user message")


async def a_chat(store: TurnStore, db_clock: object) -> dict[str, str]:
    """Race set-up: one chat in RACE_WS."""
    return {"chat_id": await store.create_chat(workspace_id=RACE_WS)}


async def streaming_message(store: TurnStore, db_clock: object) -> dict[str, Any]:
    """Race set-up: a chat in RACE_WS and its fresh assistant shell (`turns` only: the shell
    is 'streaming' where the adapter tracks statuses). `before` is the shell as read back."""
    chat_id = await store.create_chat(workspace_id=RACE_WS)
    message_id = await store.persist_assistant_shell(
        chat_id=chat_id, workspace_id=RACE_WS, turn_id=new_turn_id()
    )
    assert message_id is not None, (
        f"set-up: persist_assistant_shell of a new turn in chat {chat_id!r} returned None; "
        "expected the new row's id"
    )
    before = await existing_message(store, message_id, RACE_WS, "assistant shell")
    return {"chat_id": chat_id, "message_id": message_id, "before": before}


@runtime_checkable
class KillableStore(Protocol):
    """A replica in a process of its own (a DriverStore, guarded or not): it can be killed."""

    async def kill(self) -> None: ...


async def append_steps(store: TurnStore, turn: Turn, steps: tuple[str, ...]) -> None:
    """Set-up: each step appended to the turn's streaming assistant message, confirmed."""
    for content in steps:
        assert await store.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content=content,
            parts=text_parts(content),
        ), (
            f"set-up: append_step({content!r}) on the live streaming row "
            f"{turn.assistant_message_id!r} returned False; expected True"
        )


def describe_message(message: Message, usage: list[Usage] | None = None) -> str:
    """A row in words, for assertion messages: status and content (and usage, if given)."""
    shown = f"status {message.status!r}, content {message.content!r}"
    return shown if usage is None else f"{shown}, usage {[usage_values(u) for u in usage]}"


STEPS = ("the first step", "the first step, the second", "the first step, the second, a third")
"""Successive step contents of one streaming turn (each step carries the text so far)."""

FINAL = "the final answer"

STORABLE_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
"""Any Unicode scalar value PostgreSQL can keep: every code point but NUL and surrogates
(category Cs). The same characters as `codec="utf-8"`, without Hypothesis encoding every
code point to find them: two seconds of CPU in each process that draws them."""


@dataclass(frozen=True)
class ConfirmedWrites:
    """A turn streaming STEPS and one finalized to FINAL with USAGE_A, every write confirmed
    True: what DUR-1 says must survive the writer's death or the server's."""

    streaming: Turn
    finished: Turn

    @classmethod
    async def make(cls, writer: TurnStore) -> ConfirmedWrites:
        streaming = await streaming_turn(writer)
        await append_steps(writer, streaming, STEPS)
        finished = await streaming_turn(writer)
        assert await writer.finalize(
            message_id=finished.assistant_message_id,
            workspace_id=finished.workspace_id,
            status="completed",
            content=FINAL,
            parts=text_parts(FINAL),
            usage=USAGE_A,
        ), "set-up: finalize of a live streaming row returned False"
        return cls(streaming, finished)

    async def assert_survived(self, reader: TurnStore, death: str) -> None:
        after = await assistant_row(reader, self.streaming)
        assert (after.status, after.content, after.parts) == (
            "streaming",
            STEPS[-1],
            text_parts(STEPS[-1]),
        ), f"confirmed steps did not survive {death}: {describe_message(after)}"
        done = await assistant_row(reader, self.finished)
        usage = await reader.usage_for(message_id=self.finished.assistant_message_id)
        assert (done.status, done.content, [usage_values(u) for u in usage]) == (
            "completed",
            FINAL,
            [usage_values(USAGE_A)],
        ), f"a confirmed finalize did not survive {death}: {describe_message(done, usage)}"


Sweep = Callable[..., Awaitable[int]]
"""A replica's `sweep_streaming` or `sweep_runs`, called as `sweep(older_than=d)`."""


def wider(gap: timedelta, needed: timedelta) -> timedelta:
    """The gap of the next attempt: twice what the last one had or would have needed."""
    return 2 * max(gap, needed)


class SweepPremise:
    """One attempt at the timing premise of a sweep scenario, on the database clock: rows
    written before `pass_gap()` are stale and rows written after it fresh, for a sweep made
    through `sweep()` that ends within the gap. A premise that did not hold is recorded, not
    raised: `sweep_premise` then tries again with a wider gap."""

    def __init__(self, clock: DatabaseClock, gap: timedelta) -> None:
        self.gap = gap
        self.broken: list[str] = []
        self.needed = gap
        """The gap this attempt would have needed (more than `gap` if the premise broke)."""
        self._clock = clock
        self._stale_before: datetime | None = None
        self._fresh_from: datetime | None = None

    async def pass_gap(self) -> None:
        """Between the stale rows and the fresh ones: let `gap` pass on the database clock."""
        self._stale_before = await self._clock.now()
        self._fresh_from = await self._clock.sleep_until(self._stale_before + self.gap)

    async def sweep(self, sweep: Sweep) -> int:
        """`sweep(older_than=d)`, with d chosen on the database clock as the sweep is called:
        just under the age the newest stale row has then at least, so every stale row is
        strictly older than d; the fresh rows are younger than d if the sweep ends within
        the gap, which is recorded."""
        assert self._stale_before is not None, "SweepPremise.sweep before pass_gap"
        older_than = await self._clock.now() - self._stale_before - THRESHOLD_MARGIN
        swept = await sweep(older_than=older_than)
        await self.fresh_at(older_than)
        return swept

    async def fresh_at(self, older_than: timedelta) -> None:
        """Record whether the rows written after the gap were still younger than
        `older_than` when the sweep that just returned ran."""
        assert self._fresh_from is not None, "SweepPremise.fresh_at before pass_gap"
        age = await self._clock.now() - self._fresh_from
        self.needed = max(self.needed, self.gap + age - older_than)
        self.require(
            age < older_than,
            f"the fresh rows were {age.total_seconds():.3f} s old when the sweep ended, not "
            f"younger than its threshold {older_than.total_seconds():.3f} s",
        )

    def require(self, holds: bool, what: str) -> None:
        """Record a premise of this attempt that did not hold (`what` says how)."""
        if not holds:
            self.broken.append(what)


T = TypeVar("T")


async def sweep_premise(
    clock: DatabaseClock,
    attempt: Callable[[SweepPremise], Awaitable[T]],
    *,
    settle: Sequence[Sweep],
) -> T:
    """`attempt`'s result once its timing premise held, tried GAP_ATTEMPTS times from
    SWEEP_GAP, each time with a wider gap; else ScenarioPremiseError (no verdict). Verdicts
    belong after this returns. Before another attempt the `settle` sweeps close what the
    last one left streaming or active, all of it stale at STALE_ONLY, so the next counts
    start clean."""
    gap, broken = SWEEP_GAP, []
    for _ in range(GAP_ATTEMPTS):
        premise = SweepPremise(clock, gap)
        result = await attempt(premise)
        if not premise.broken:
            return result
        broken += [f"{gap.total_seconds():g} s gap: {what}" for what in premise.broken]
        await clock.let_pass(STALE_ONLY)
        for sweep in settle:
            await sweep(older_than=STALE_ONLY)
        gap = wider(gap, premise.needed)
    raise ScenarioPremiseError(
        "the machine stalled through every attempt at the sweep's timing premise ("
        + "; ".join(broken)
        + "), so no verdict was drawn; rerun the test"
    )


class RacePremiseError(ScenarioPremiseError):
    """An interleaving ended after its fresh rows had aged past the race's threshold."""

    def __init__(self, message: str, needed: timedelta) -> None:
        super().__init__(message)
        self.needed = needed
        """The gap the interleaving would have needed."""


async def race_gap(clock: DatabaseClock, gap: timedelta) -> dict[str, Any]:
    """Race set-up between its stale rows and its fresh ones: let `gap` pass, and return
    the threshold its sweeps use (`older_than`, under which every earlier row is stale at
    any later sweep) and when the fresh rows began (`fresh_since`, for `race_premise`)."""
    stale_before = await clock.now()
    fresh_since = await clock.sleep_until(stale_before + gap)
    return {"older_than": fresh_since - stale_before, "fresh_since": fresh_since}


def race_premise(outcome: RaceOutcome) -> None:
    """No verdict on an interleaving that ended after the rows written after `race_gap`
    had aged past the threshold: `explore_stale` tries again with a wider gap."""
    took = outcome.finished_at - outcome.context["fresh_since"]
    older_than = outcome.context["older_than"]
    if took >= older_than:
        raise RacePremiseError(
            f"the interleaving ended {took.total_seconds():.3f} s of database time after the "
            f"fresh rows were written, past the threshold {older_than.total_seconds():.3f} s; "
            "no verdict",
            needed=took,
        )


async def explore_stale(engine: RaceEngine, race_for: Callable[[timedelta], Race]) -> Exploration:
    """Explore the race `race_for(gap)` from RACE_GAP; after an interleaving the machine
    slowed past its premise, again with a wider gap, GAP_ATTEMPTS times at most."""
    gap = RACE_GAP
    for _ in range(GAP_ATTEMPTS - 1):
        try:
            return await engine.explore(race_for(gap))
        except RacePremiseError as stalled:
            gap = wider(gap, stalled.needed)
    return await engine.explore(race_for(gap))
