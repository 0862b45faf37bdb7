"""Network faults on one replica's link: a late step held in transit, requests and answers
lost to resets and timeouts, a proxy taken down mid-turn, large parts through a throttled
and sliced link, a sweep delayed in transit.

Every replica under a fault reaches PostgreSQL through a proxy of its own
(`faulty_store`); reads and retries go through a healthy replica. Order comes from
control (a toxic holding bytes until it is removed, the statement gate, the database
clock), never from sleeps, and every scenario proves its fault happened (the direction
it took, the bytes it held) before it judges: a fault that did not happen is a
ScenarioPremiseError, never a pass.
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from harness import Message, Run, RunAlreadyActive, TurnStore, Usage, UsageIn
from harness.errors import ScenarioPremiseError
from harness.proxy.statement_gate import StatementEvent, StatementGate
from harness.pytest_plugin.network_faults import FaultyReplica

from .support import (
    ACTIVE_RUN_STATUSES,
    FINAL,
    USAGE_A,
    SweepPremise,
    Turn,
    assistant_row,
    describe_error,
    describe_message,
    new_turn_id,
    new_workspace,
    streaming_turn,
    sweep_premise,
    text_parts,
    usage_values,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]

HOLD_MS = 600_000
"""A latency no scenario outlives: the toxic holds the bytes until it is removed."""

WAIT = 10.0
"""Bound on an operation under a fault: it must return or raise within this."""

POLL = 0.002
"""Bound on each wait for another thread's news (the proxy's)."""

FINAL_PARTS = [{"type": "text", "text": FINAL}, {"type": "finish", "reason": "stop"}]


async def connected(faulty_store, name: str) -> FaultyReplica:
    """A replica behind a proxy of its own, its connection already open: a pooled store
    connects on first use, and the fault must meet the operation, not the connect."""
    replica = await faulty_store(name=name)
    await replica.store.list_messages(chat_id="warm-up", workspace_id=new_workspace())
    return replica


def premise(holds: bool, message: str) -> None:
    """Stop the scenario without a verdict when the fault it exists for did not happen."""
    if not holds:
        raise ScenarioPremiseError(message)


@dataclass
class Outcome:
    """How an operation under a fault ended; judged after it, outside any task group."""

    result: Any = None
    error: BaseException | None = None
    done: bool = False
    ended: anyio.Event = field(default_factory=anyio.Event)


async def run_bounded(operation: Awaitable[Any], outcome: Outcome) -> None:
    try:
        with anyio.move_on_after(WAIT):
            try:
                outcome.result = await operation
            except Exception as exc:
                outcome.error = exc
            outcome.done = True
    finally:
        outcome.ended.set()


@asynccontextmanager
async def in_background(operation: Awaitable[Any]) -> AsyncIterator[Outcome]:
    """Run the operation while the block applies its fault; it has ended after the block."""
    outcome = Outcome()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_bounded, operation, outcome)
        yield outcome


def raised(outcome: Outcome, what: str) -> BaseException:
    """The error of an operation whose request or answer the network lost: it cannot know
    its outcome, so it must raise (not return, not hang)."""
    assert outcome.done, f"{what} neither returned nor raised within {WAIT:g} s"
    assert outcome.error is not None, (
        f"{what} returned {outcome.result!r}, but the network lost its request or its "
        "answer: it cannot know whether it happened, so it had to raise"
    )
    return outcome.error


def returned(outcome: Outcome, what: str) -> Any:
    """The result of an operation that had to return once its fault was lifted."""
    assert outcome.done, f"{what} neither returned nor raised within {WAIT:g} s"
    assert outcome.error is None, f"{what} raised {describe_error(outcome.error)}"
    return outcome.result


async def cut_short(operation: Awaitable[Any], what: str) -> BaseException:
    outcome = Outcome()
    await run_bounded(operation, outcome)
    return raised(outcome, what)


async def stepped_turn(store: TurnStore, text: str = "first step") -> Turn:
    """A streaming assistant row carrying one finished step."""
    turn = await streaming_turn(store)
    assert await store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content=text,
        parts=text_parts(text),
    ), "set-up: append_step on a fresh streaming row returned False; expected True"
    return turn


def finalize(store: TurnStore, turn: Turn, usage: UsageIn | None = USAGE_A) -> Awaitable[bool]:
    """The turn's finalize to 'completed' with FINAL (and, in `usage` scenarios, USAGE_A)."""
    return store.finalize(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        status="completed",
        content=FINAL,
        parts=FINAL_PARTS,
        usage=usage,
    )


def is_finalized(row: Message, usage: list[Usage]) -> bool:
    """The row as `finalize` left it, with exactly its one usage row."""
    return (row.status, row.content, row.parts) == ("completed", FINAL, FINAL_PARTS) and [
        usage_values(u) for u in usage
    ] == [usage_values(USAGE_A)]


async def finalize_landed_whole_or_not_at_all(
    healthy: TurnStore, turn: Turn, before: Message, fault: str
) -> bool:
    """Whether the cut finalize landed: whole (finalized with its one usage row) or not
    at all (the row exactly as before, no usage); anything between fails (DUR-2)."""
    row = await assistant_row(healthy, turn)
    usage = await healthy.usage_for(message_id=turn.assistant_message_id)
    whole = is_finalized(row, usage)
    nothing = row == before and usage == []
    assert whole or nothing, (
        f"finalize cut by {fault} left a partial write: {describe_message(row, usage)}; expected "
        f"either the finalized row with its one usage row, or the row as before "
        f"({describe_message(before, [])})"
    )
    return whole


# MSG-4: the late step, held in transit while another replica finalizes ---------------


@pytest.mark.requirement("MSG-4c")
@pytest.mark.capability("network")
async def test_late_step_held_in_transit_is_a_no_op(faulty_store, open_store, db_clock):
    """A step held in transit by a latency toxic until another replica finalized changes nothing."""
    healthy = await open_store(name="healthy")
    turn = await stepped_turn(healthy)
    writer = await connected(faulty_store, "writer")
    finisher = await connected(faulty_store, "finisher")
    step_seq = len(writer.gate.events) + 1 if writer.has_gate else 0
    held = writer.add_toxic("latency", stream="upstream", latency=HOLD_MS)

    late_step = writer.store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content="late step",
        parts=text_parts("late step"),
    )
    async with in_background(late_step) as step:
        if writer.has_gate:  # the step's statement is on the wire, inside the toxic
            await writer.gate.wait_sent(step_seq)
        finalized_ok = await finalize(finisher.store, turn, usage=None)
        committed_by = await db_clock.now()
        finalized = await assistant_row(healthy, turn)
        answered_while_held = step.done
        released_at = time.monotonic()
        writer.remove_toxic(held)

    assert finalized_ok is True, (
        f"expected finalize of a streaming row to return True, got {finalized_ok!r}"
    )
    premise(
        not answered_while_held,
        "append_step completed while the latency toxic was holding its bytes",
    )
    arrived = await writer.last_statement_started()
    premise(
        arrived is not None and arrived > committed_by,
        f"the step's statement had to reach the database after the finalize committed "
        f"(by {committed_by}), but the writer's last statement began at {arrived}",
    )
    if writer.has_gate:
        step_event = writer.gate.events[step_seq - 1]
        finalize_event = finisher.gate.events[-1]
        premise(
            step_event.sent_at is not None
            and finalize_event.completed_at is not None
            and step_event.completed_at is not None
            and step_event.sent_at < finalize_event.completed_at < released_at
            and released_at < step_event.completed_at,
            f"expected: step sent, finalize committed, toxic removed, step answered; "
            f"the gate saw {step_event} and {finalize_event}",
        )
    stepped = returned(step, "the late append_step")
    assert stepped is False, (
        f"expected False: append_step reached the database after the finalize committed, yet "
        f"returned {stepped!r}"
    )
    after = await assistant_row(healthy, turn)
    assert after == finalized, (
        f"expected the late step to leave the finalized row as it was, "
        f"{describe_message(finalized)}; found {describe_message(after)}"
    )


# DUR-4: an operation whose request or answer was lost, retried -----------------------


class Retried(ABC):
    """One operation of DUR-4: set it up, attempt it, see whether the lost attempt
    landed, retry it through a healthy replica and judge where the retry converged."""

    async def setup(self, healthy: TurnStore) -> None:
        self.workspace_id = new_workspace()
        self.chat_id = await healthy.create_chat(workspace_id=self.workspace_id)

    @abstractmethod
    def attempt(self, store: TurnStore) -> Awaitable[Any]: ...

    @abstractmethod
    async def landed(self, healthy: TurnStore) -> bool:
        """Read back whether the lost attempt wrote, and remember what it wrote."""

    @abstractmethod
    async def retry_converges(self, healthy: TurnStore) -> None: ...

    async def retry(self, healthy: TurnStore) -> Any:
        """The retry's result; an error from it fails the scenario, with what it was."""
        try:
            return await self.attempt(healthy)
        except Exception as exc:
            raise AssertionError(
                f"the retry through a healthy replica raised {describe_error(exc)}"
            ) from exc


class PersistTurn(Retried):
    def __init__(self, operation: str, role: str) -> None:
        self.operation, self.role = operation, role
        self.written: str | None = None

    async def setup(self, healthy: TurnStore) -> None:
        await super().setup(healthy)
        self.turn_id = new_turn_id()

    def attempt(self, store: TurnStore) -> Awaitable[str | None]:
        text = {"text": "hello"} if self.role == "user" else {}
        return getattr(store, self.operation)(
            chat_id=self.chat_id, workspace_id=self.workspace_id, turn_id=self.turn_id, **text
        )

    async def rows(self, healthy: TurnStore) -> list[Message]:
        rows = await healthy.list_messages(chat_id=self.chat_id, workspace_id=self.workspace_id)
        return [r for r in rows if r.turn_id == self.turn_id and r.role == self.role]

    async def landed(self, healthy: TurnStore) -> bool:
        rows = await self.rows(healthy)
        assert len(rows) <= 1, (
            f"expected at most one {self.role} row for the turn, but the lost {self.operation} "
            f"left {len(rows)}: {[r.id for r in rows]}"
        )
        self.written = rows[0].id if rows else None
        return bool(rows)

    async def retry_converges(self, healthy: TurnStore) -> None:
        retried = await self.retry(healthy)
        assert retried is not None, (
            f"expected the retried {self.operation} to return the row's id, got None"
        )
        if self.written is not None:
            assert retried == self.written, (
                f"the retried {self.operation} returned {retried!r}, but the lost attempt "
                f"had written row {self.written!r}: a retry must return the same id"
            )
        rows = await self.rows(healthy)
        assert [r.id for r in rows] == [retried], (
            f"after the retry the turn has {self.role} rows {[r.id for r in rows]}, "
            f"expected exactly {[retried]}"
        )
        expected = "hello" if self.role == "user" else ""
        assert rows[0].content == expected, (
            f"the retried {self.role} row has content {rows[0].content!r}, not {expected!r}"
        )


class Finalize(Retried):
    async def setup(self, healthy: TurnStore) -> None:
        self.turn = await stepped_turn(healthy)

    def attempt(self, store: TurnStore) -> Awaitable[bool]:
        return finalize(store, self.turn)

    async def landed(self, healthy: TurnStore) -> bool:
        return (await assistant_row(healthy, self.turn)).status != "streaming"

    async def retry_converges(self, healthy: TurnStore) -> None:
        done = await self.retry(healthy)
        assert done is True, f"expected the retried finalize to return True, got {done!r}"
        row = await assistant_row(healthy, self.turn)
        usage = await healthy.usage_for(message_id=self.turn.assistant_message_id)
        assert is_finalized(row, usage), (
            f"after the retried finalize the row is {describe_message(row, usage)}; expected "
            f"'completed', {FINAL!r} and exactly one usage row {usage_values(USAGE_A)}"
        )


class BeginRun(Retried):
    lost_run: Run | None = None

    def attempt(self, store: TurnStore) -> Awaitable[Run]:
        return store.begin_run(chat_id=self.chat_id, workspace_id=self.workspace_id)

    async def landed(self, healthy: TurnStore) -> bool:
        self.lost_run = await healthy.latest_run(
            chat_id=self.chat_id, workspace_id=self.workspace_id
        )
        if self.lost_run is not None:
            assert self.lost_run.status in ACTIVE_RUN_STATUSES, (
                f"the run the lost begin_run made is {self.lost_run.status!r}, not active"
            )
        return self.lost_run is not None

    async def retry_converges(self, healthy: TurnStore) -> None:
        try:
            retried: Run | None = await self.attempt(healthy)
        except RunAlreadyActive:
            retried = None
            assert self.lost_run is not None, (
                "the lost begin_run made no run, yet the retry reported RunAlreadyActive"
            )
        except Exception as exc:
            raise AssertionError(
                f"the retried begin_run raised {describe_error(exc)}; it had to succeed or "
                "report RunAlreadyActive"
            ) from exc
        latest = await healthy.latest_run(chat_id=self.chat_id, workspace_id=self.workspace_id)
        assert latest is not None, "after the retry the chat has no run at all"
        assert latest.status in ACTIVE_RUN_STATUSES, (
            f"after the retry the chat's latest run is {latest.status!r}, not active: {latest}"
        )
        expected = retried or self.lost_run
        assert expected is not None, "expected the retry or the lost attempt to have made a run"
        assert latest.id == expected.id, (
            f"expected latest_run to show run {expected.id!r} (the "
            f"{'retry' if retried else 'lost attempt'}'s), found run {latest.id!r}"
        )
        # Exactly one active run: once it is finished, nothing else blocks a new begin.
        assert await healthy.finish_run(run_id=latest.id, status="aborted"), (
            f"finish_run of the active run {latest.id!r} returned False"
        )
        try:
            await self.attempt(healthy)
        except RunAlreadyActive as exc:
            raise AssertionError(
                "a second active run was left behind: with the retried run finished, "
                "begin_run still reports RunAlreadyActive"
            ) from exc


OPERATIONS = [
    pytest.param(
        lambda: PersistTurn("persist_user_turn", "user"),
        marks=pytest.mark.capability("turns"),
        id="persist_user_turn",
    ),
    pytest.param(
        lambda: PersistTurn("persist_assistant_shell", "assistant"),
        marks=pytest.mark.capability("turns"),
        id="persist_assistant_shell",
    ),
    pytest.param(Finalize, marks=pytest.mark.capability("streaming", "usage"), id="finalize"),
    pytest.param(BeginRun, marks=pytest.mark.capability("runs"), id="begin_run"),
]


@dataclass(frozen=True)
class WireFault:
    """A toxic on one direction of a replica's link, and what it does to an operation."""

    toxic: str
    stream: str
    attributes: dict[str, int]
    effect: str

    @property
    def answer_lost(self) -> bool:
        """The request reached the server whole; only the answer is lost."""
        return self.stream == "downstream"

    def __str__(self) -> str:
        return f"{self.toxic} on {self.stream} ({self.effect})"


WIRE_FAULTS = [
    WireFault("reset_peer", "upstream", {"timeout": 0}, "request discarded, connection reset"),
    WireFault("timeout", "upstream", {"timeout": 100}, "request dropped, connection closed"),
    WireFault("limit_data", "upstream", {"bytes": 16}, "only 16 request bytes, then closed"),
    WireFault("reset_peer", "downstream", {"timeout": 0}, "answer discarded, connection reset"),
    WireFault("timeout", "downstream", {"timeout": 500}, "answer dropped, connection closed"),
    WireFault("limit_data", "downstream", {"bytes": 10}, "only 10 answer bytes, then closed"),
]


def fault_id(fault: WireFault) -> str:
    return f"{fault.toxic}-{fault.stream}"


async def cut_short_by(
    fault: WireFault, replica: FaultyReplica, operation: Awaitable[Any], what: str
) -> BaseException:
    """The operation's error under the fault. A timeout on the answers closes the
    connection once the server's answer was dropped: through the harness's gate, as soon as
    the gate saw that answer (the toxic's timeout 0 drops answers and never closes; the
    proxy is then taken down); through a real Toxiproxy, after the toxic's own delay, which
    only bounds how long its server may take to answer (the premise checks it did)."""
    if not (fault.toxic == "timeout" and fault.answer_lost and replica.has_gate):
        replica.add_toxic(fault.toxic, stream=fault.stream, **fault.attributes)
        return await cut_short(operation, what)
    first_seq = len(replica.gate.events) + 1
    replica.add_toxic(fault.toxic, stream=fault.stream, timeout=0)
    async with in_background(operation) as outcome:
        version = replica.gate.version
        while not server_answered(fault, replica, first_seq):
            version = await replica.gate.wait_changed(version)
        replica.down()
    return raised(outcome, what)


def server_answered(fault: WireFault, replica: FaultyReplica, first_seq: int) -> bool:
    """Whether the server answered a statement of the operation (executed it, or, for a
    describe-first client, answered its Parse/Describe) and the fault then lost that answer,
    when the write itself did not land (an operation of several statements loses the first).

    The gate saw it answered; without a gate (a real Toxiproxy) the toxic's spec tells:
    reset_peer and limit_data act on the server's answer bytes only, so the operation's
    error proves there was an answer, whereas a timeout may close before the request came.
    """
    if replica.has_gate:
        return any(
            event.executed or event.answered_at is not None
            for event in replica.gate.events[first_seq - 1 :]
        )
    return fault.toxic != "timeout"


@pytest.mark.requirement("DUR-4a")
@pytest.mark.capability("network")
@pytest.mark.parametrize("fault", WIRE_FAULTS, ids=fault_id)
@pytest.mark.parametrize("make", OPERATIONS)
async def test_retry_after_a_lost_request_or_answer_converges(
    faulty_store, open_store, make, fault
):
    """A request or answer lost to a reset or timeout: an error, then a retry converges."""
    operation: Retried = make()
    healthy = await open_store(name="healthy")
    await operation.setup(healthy)
    replica = await connected(faulty_store, "cut")
    first_seq = len(replica.gate.events) + 1 if replica.has_gate else 0

    await cut_short_by(
        fault, replica, operation.attempt(replica.store), f"an operation under {fault}"
    )

    landed = await operation.landed(healthy)
    if fault.answer_lost:
        premise(
            landed or server_answered(fault, replica, first_seq),
            f"under {fault} the server had to execute the request and lose the answer, but "
            "nothing landed and no statement of the operation was executed",
        )
    else:
        premise(not landed, f"under {fault} the request reached the server: it landed")
    await operation.retry_converges(healthy)


@pytest.mark.requirement("DUR-4a")
@pytest.mark.capability("network")
@pytest.mark.needs_gate
@pytest.mark.parametrize("make", OPERATIONS)
async def test_retry_after_the_answer_to_any_statement_was_lost_converges(
    faulty_store, open_store, make
):
    """The server ran a statement of the operation, the answer never came: a retry converges."""
    healthy = await open_store(name="healthy")
    statements = await count_statements(faulty_store, healthy, make())
    for k in range(1, statements + 1):
        operation: Retried = make()
        await operation.setup(healthy)
        replica = await connected(faulty_store, f"cut-after-statement-{k}")
        gate = replica.gate
        seq = gate.cut_after_send(len(gate.events) + k)

        await cut_short(
            operation.attempt(replica.store), f"an operation cut after statement {k} was sent"
        )

        event = gate.events[seq - 1]
        premise(
            event.cut,
            f"statement {k} had to be cut as the server began to answer it; the gate saw {event}",
        )
        await operation.landed(healthy)
        await operation.retry_converges(healthy)


async def count_statements(faulty_store, healthy: TurnStore, operation: Retried) -> int:
    """How many statements the operation sends, from a run of it through a gate."""
    await operation.setup(healthy)
    probe = await connected(faulty_store, "probe")
    before = len(probe.gate.events)
    await operation.attempt(probe.store)
    count = len(probe.gate.events) - before
    premise(count > 0, "the operation sent no statement through its proxy")
    return count


# DUR-2: a write cut in the middle lands whole or not at all --------------------------


DOWNSTREAM_FAULTS = [f for f in WIRE_FAULTS if f.answer_lost]


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming", "usage")
@pytest.mark.parametrize("fault", DOWNSTREAM_FAULTS, ids=fault_id)
async def test_finalize_cut_on_the_wire_lands_whole_or_not_at_all(faulty_store, open_store, fault):
    """A finalize with usage whose connection dies on the answer: both rows or neither."""
    healthy = await open_store(name="healthy")
    turn = await stepped_turn(healthy)
    before = await assistant_row(healthy, turn)
    replica = await connected(faulty_store, "cut")

    await cut_short_by(fault, replica, finalize(replica.store, turn), f"finalize under {fault}")

    await finalize_landed_whole_or_not_at_all(healthy, turn, before, str(fault))


@dataclass(frozen=True)
class HoldPoint:
    """Where the gate stops an operation: before its k-th statement reaches the server,
    or after the server executed it but before its Sync (its commit)."""

    statement: int
    before_commit: bool

    def __str__(self) -> str:
        where = "executed, before its commit" if self.before_commit else "before it was sent"
        return f"statement {self.statement} ({where})"


async def hold_points(faulty_store, healthy: TurnStore, name: str) -> list[HoldPoint]:
    """Every place an operation can be held, from a run of it through a gate."""
    probe = await connected(faulty_store, f"probe-{name}")
    before = len(probe.gate.events)
    turn = await stepped_turn(healthy)
    await OPERATIONS_HELD[name](probe.store, turn)
    events = probe.gate.events[before:]
    premise(bool(events), f"{name} sent no statement through its proxy")
    return [
        HoldPoint(k, before_commit)
        for k, event in enumerate(events, 1)
        for before_commit in ((False, True) if event.executes else (False,))
    ]


LARGE_STEP_TEXT = "a whole step " * 20
LARGE_STEP_PARTS = [
    {"type": "reasoning", "text": "thinking " * 50},
    {"type": "text", "text": LARGE_STEP_TEXT},
]


def big_step(store: TurnStore, turn: Turn) -> Awaitable[bool]:
    return store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content=LARGE_STEP_TEXT,
        parts=LARGE_STEP_PARTS,
    )


OPERATIONS_HELD = {"finalize": finalize, "append_step": big_step}


async def step_landed_whole_or_not_at_all(
    healthy: TurnStore, turn: Turn, before: Message, fault: str
) -> bool:
    row = await assistant_row(healthy, turn)
    whole = (row.status, row.content, row.parts) == (
        "streaming",
        LARGE_STEP_TEXT,
        LARGE_STEP_PARTS,
    )
    assert whole or row == before, (
        f"append_step cut by {fault} left a partial write: {describe_message(row)}, "
        f"{len(row.parts)} parts; expected the step whole, or the row as before "
        f"({describe_message(before)})"
    )
    return whole


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming")
@pytest.mark.needs_gate
@pytest.mark.parametrize(
    "name",
    [pytest.param("finalize", marks=pytest.mark.capability("usage")), "append_step"],
)
async def test_proxy_down_mid_operation_lands_whole_or_not_at_all(faulty_store, open_store, name):
    """The proxy taken down while the gate holds the operation, at every point: whole or nothing."""
    healthy = await open_store(name="healthy")
    check = {
        "finalize": finalize_landed_whole_or_not_at_all,
        "append_step": step_landed_whole_or_not_at_all,
    }[name]
    for n, point in enumerate(await hold_points(faulty_store, healthy, name), 1):
        turn = await stepped_turn(healthy)
        before = await assistant_row(healthy, turn)
        replica = await connected(faulty_store, f"held-{n}")
        gate = replica.gate
        seq = len(gate.events) + point.statement
        if point.before_commit:
            gate.hold_sync(seq)
        else:
            gate.hold_before(seq)
        async with in_background(OPERATIONS_HELD[name](replica.store, turn)) as attempt:
            if point.before_commit:
                held = await executed_before_commit(gate, seq)
            else:
                held = await gate.wait_held(seq)
            replica.down()

        premise(held.sync_held if point.before_commit else held.held, f"{point}: {held}")
        raised(attempt, f"{name} with the proxy taken down at {point}")
        await check(healthy, turn, before, f"the proxy taken down at {point}")


async def executed_before_commit(gate: StatementGate, seq: int) -> StatementEvent:
    """Once the server has executed statement `seq`, whose Sync the gate holds back."""
    await gate.wait_sync_held(seq)
    with anyio.fail_after(WAIT):
        # the answer arrives on the proxy's thread: poll, each sleep only bounds the wait
        while not (event := gate.events[seq - 1]).executed and not event.finished:  # noqa: ASYNC110
            await anyio.sleep(POLL)
    return event


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming", "usage")
async def test_proxy_down_between_operations_keeps_the_turn_whole(faulty_store, open_store):
    """The proxy down between operations: they fail and change nothing; once up, the turn ends."""
    healthy = await open_store(name="healthy")
    writer = await connected(faulty_store, "writer")
    turn = await stepped_turn(writer.store)
    before = await assistant_row(healthy, turn)

    writer.down()
    await cut_short(big_step(writer.store, turn), "append_step with the proxy down")
    await cut_short(finalize(writer.store, turn), "finalize with the proxy down")

    usage = await healthy.usage_for(message_id=turn.assistant_message_id)
    after = await assistant_row(healthy, turn)
    assert (after, usage) == (before, []), (
        f"operations that failed with the proxy down changed the turn: "
        f"{describe_message(after, usage)}, expected it as before "
        f"({describe_message(before, [])})"
    )
    writer.up()
    done = await finalize(await writer.reconnect(), turn)
    assert done is True, f"expected the finalize after the proxy came back to return True: {done!r}"
    landed = await finalize_landed_whole_or_not_at_all(healthy, turn, before, "no fault")
    assert landed, "expected the finalize after the proxy came back to land; it returned True only"


# Large parts through a throttled or sliced link --------------------------------------


LARGE_PARTS_BYTES = 1_000_000


def large_parts(size: int = LARGE_PARTS_BYTES) -> list[dict[str, Any]]:
    """About `size` bytes of parts JSON: seeded text with multi-byte characters, quotes,
    backslashes and newlines, so a lost, reordered or re-encoded byte shows."""
    rng = random.Random(20240501)
    alphabet = 'abcdefghij klmnopqrstuvwxyz ÉéüßЖж中文🙂"\\\n\t{}[],:'
    parts: list[dict[str, Any]] = []
    total = 0
    while total < size:
        text = "".join(rng.choices(alphabet, k=4096))
        parts.append({"type": "text", "text": f"{len(parts)}:{text}"})
        total += wire_size(parts[-1:])
    return parts


def wire_size(parts: list[dict[str, Any]]) -> int:
    """A lower bound on the bytes the parts take on the wire in either direction."""
    return len(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode())


def first_difference(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    if len(got) != len(want):
        return f"{len(got)} parts came back, {len(want)} were written"
    index = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    return f"part {index} differs: {str(got[index])[:120]!r} vs {str(want[index])[:120]!r}"


@dataclass(frozen=True)
class Shaping:
    """A toxic that changes how the bytes travel, and the least time it must add to
    moving `size` bytes one way (from the figure its spec states)."""

    toxic: str
    attributes: dict[str, int]

    def least_seconds(self, size: int) -> float:
        if self.toxic == "bandwidth":  # rate KB/s, KB = 1000 bytes; the spec allows 10 %
            return 0.9 * size / (self.attributes["rate"] * 1000)
        # slicer: pieces of at most average + variation bytes, `delay` µs apart; half of
        # those gaps at least, since a read chunk's last piece goes without one
        largest = self.attributes["average_size"] + self.attributes["size_variation"]
        return (size / largest) * self.attributes["delay"] / 1_000_000 / 2


SHAPINGS = [
    Shaping("bandwidth", {"rate": 4000}),
    Shaping("slicer", {"average_size": 1000, "size_variation": 500, "delay": 300}),
]


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming")
@pytest.mark.parametrize("shaping", SHAPINGS, ids=lambda s: s.toxic)
async def test_large_parts_arrive_intact_through_a_shaped_link(faulty_store, open_store, shaping):
    """About 1 MB of parts through a throttled or sliced link is stored and read back intact."""
    healthy = await open_store(name="healthy")
    turn = await streaming_turn(healthy)
    replica = await connected(faulty_store, "shaped")
    parts = large_parts()
    size = wire_size(parts)
    for stream in ("upstream", "downstream"):
        replica.add_toxic(shaping.toxic, stream=stream, **shaping.attributes)

    started = time.monotonic()
    stored = await replica.store.append_step(
        message_id=turn.assistant_message_id,
        workspace_id=turn.workspace_id,
        content="large step",
        parts=parts,
    )
    written = time.monotonic()
    row = await replica.store.get_message(
        message_id=turn.assistant_message_id, workspace_id=turn.workspace_id
    )
    read = time.monotonic()

    assert stored is True, (
        f"expected append_step of a large step on a streaming row to return True, got {stored!r}"
    )
    direct = await assistant_row(healthy, turn)
    assert direct.parts == parts, (
        "the parts stored through the shaped link differ: " + first_difference(direct.parts, parts)
    )
    assert row is not None, "expected get_message through the shaped link to find the row: None"
    assert row.parts == parts, (
        "the parts read back through the shaped link differ: " + first_difference(row.parts, parts)
    )
    least = shaping.least_seconds(size)
    premise(
        written - started >= least and read - written >= least,
        f"{size} bytes through {shaping.toxic} {shaping.attributes} take at least {least:.3f} s "
        f"each way, but the write took {written - started:.3f} s and the read "
        f"{read - written:.3f} s: the toxic did not shape the link",
    )


@pytest.mark.requirement("DUR-2a")
@pytest.mark.capability("network", "streaming")
async def test_large_step_cut_midway_changes_nothing(faulty_store, open_store):
    """A 1 MB step whose link closes part-way through its request changes nothing."""
    healthy = await open_store(name="healthy")
    turn = await stepped_turn(healthy)
    before = await assistant_row(healthy, turn)
    replica = await connected(faulty_store, "cut")
    parts = large_parts()
    half = wire_size(parts) // 2
    replica.add_toxic("limit_data", stream="upstream", bytes=half)

    await cut_short(
        replica.store.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content="half a step",
            parts=parts,
        ),
        f"append_step whose link closed after {half} request bytes",
    )

    after = await assistant_row(healthy, turn)
    assert after == before, (
        f"a step cut after {half} bytes of its request changed the row: status "
        f"{after.status!r}, content {after.content!r}, {len(after.parts)} parts; expected it "
        f"as before: {before}"
    )


# SWP-5: a sweep delayed in transit ---------------------------------------------------


@pytest.mark.requirement("SWP-5b")
@pytest.mark.capability("network", "streaming")
async def test_sweep_delayed_in_transit_is_judged_on_arrival(faulty_store, open_store, db_clock):
    """A sweep sent while a row was fresh and held until it was stale judges it on arrival."""
    healthy = await open_store(name="healthy")
    sweeper = await connected(faulty_store, "sweeper")

    async def attempt(timing: SweepPremise):
        """The sweep's threshold is the gap: the row is fresh when it is sent, stale (the gap
        passed) when it arrives, and the rows written after the gap are fresh then."""
        sweep_seq = len(sweeper.gate.events) + 1 if sweeper.has_gate else 0
        held = sweeper.add_toxic("latency", stream="upstream", latency=HOLD_MS)
        overdue = await streaming_turn(healthy)
        written = (await assistant_row(healthy, overdue)).updated_at
        sent = written
        async with in_background(sweeper.store.sweep_streaming(older_than=timing.gap)) as sweep:
            if sweeper.has_gate:  # the sweep is on the wire while the row is still fresh
                await sweeper.gate.wait_sent(sweep_seq)
                sent = await db_clock.now()
            await timing.pass_gap()  # the row is stale by the database clock now
            fresh = await streaming_turn(healthy)
            fresh_before = await assistant_row(healthy, fresh)
            answered_while_held = sweep.done
            sweeper.remove_toxic(held)
            await sweep.ended.wait()
        await timing.fresh_at(timing.gap)
        timing.require(
            sent - written < timing.gap,
            f"the row had to be fresh when the sweep was sent, but it was {sent - written} old",
        )
        return overdue, fresh, fresh_before, answered_while_held, sweep

    overdue, fresh, fresh_before, answered_while_held, sweep = await sweep_premise(
        db_clock, attempt, settle=[healthy.sweep_streaming]
    )
    premise(not answered_while_held, "the sweep completed while its bytes were held")
    swept = returned(sweep, "the delayed sweep")
    overdue_after = await assistant_row(healthy, overdue)
    assert overdue_after.status == "aborted", (
        f"expected 'aborted': the row was stale by the database clock when the delayed sweep "
        f"arrived, yet it is {overdue_after.status!r} (staleness judged by the time of sending)"
    )
    fresh_after = await assistant_row(healthy, fresh)
    assert fresh_after == fresh_before, (
        f"expected the delayed sweep to leave the fresh row alone, but it went from "
        f"{describe_message(fresh_before)} to {describe_message(fresh_after)}"
    )
    assert swept == 1, f"expected sweep_streaming to return 1 (the overdue row), got {swept}"
