"""The streaming writer (capability `coalescing`): CW-1 .. CW-7.

Every window ends when the scenario advances the writer's virtual clock; no scenario
sleeps to let a timer fire. Writes are counted at the writer replica's statement gate,
and the races that matter are forced there: a timer-driven write is held in flight
while the scenario calls `flush`, `flush_all`, `delete`, or finalizes the row from
another replica. Rows are read through another replica, never through the writer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import TurnStore
from harness.virtual_time import VirtualClock

from .support import STORABLE_TEXT, Turn, streaming_turn, text_parts
from .writer_support import (
    WINDOW,
    Wire,
    debounced_write_held,
    in_background,
    opened_writer,
    premise,
    row,
    settle,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns", "streaming")]


def on_the_wire(scenario: Callable[..., Any]) -> Callable[..., Any]:
    """A scenario that counts or holds the writer's statements at its gate."""
    return pytest.mark.capability("network")(pytest.mark.needs_gate(scenario))


DELTAS_PER_WINDOW = 20
WINDOWS = 3


async def update(writer, turn: Turn, content: str, parts: list[dict[str, Any]]) -> None:
    await writer.update(turn.assistant_message_id, turn.workspace_id, content, parts)


async def assert_row(store: TurnStore, turn: Turn, content: str, what: str) -> None:
    got = await row(store, turn)
    assert got is not None, f"{what}: the row is gone"
    assert (got.content, got.parts) == (content, text_parts(content)), (
        f"{what}: expected content {content!r}, the row holds {got.content!r}"
    )


# CW-1 ---------------------------------------------------------------------------------------


@pytest.mark.requirement("CW-1a")
@on_the_wire
async def test_deltas_within_a_window_are_one_write(faulty_store, open_store):
    """20 deltas per window, three windows, and deltas given while each window's write is
    held in flight: nothing is written inside a window, one write ends each."""
    reader = await open_store(name="reader")
    turn = await streaming_turn(reader)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        wire = Wire(replica.gate)
        text = ""

        async def deltas(label: str, n: int) -> None:
            nonlocal text
            for delta in range(n):
                text += f"{label}.{delta} "
                await update(writer, turn, text, text_parts(text))

        for window in range(WINDOWS):
            await deltas(f"w{window}", DELTAS_PER_WINDOW)
            await settle(clock)
            assert wire.count() == window, (
                f"window {window + 1}: {wire.count() - window} write(s) before the window "
                f"ended; the wire saw {wire.texts()}"
            )
            held = replica.gate.hold_next()
            await clock.advance(WINDOW.total_seconds())
            await replica.gate.wait_held(held)
            await deltas(f"w{window}-in-flight", DELTAS_PER_WINDOW // 4)
            replica.gate.release(held)
            await wire.completed(window + 1)
            await settle(clock)
            assert wire.count() == window + 1, (
                f"window {window + 1}: its deltas, and those given while its write was in "
                f"flight, became {wire.count() - window} writes, not one; the wire saw "
                f"{wire.texts()}"
            )
        await writer.flush(turn.assistant_message_id)
        await assert_row(reader, turn, text, "after the last window and a flush")


# CW-2 ---------------------------------------------------------------------------------------


def structural_steps() -> list[tuple[str, list[dict[str, Any]]]]:
    """Each structural change of CW-2, each after a plain delta, as (name, parts)."""
    reasoning = {"type": "reasoning", "text": "thinking"}
    call = {"type": "tool-call", "toolCallId": "call-1", "toolName": "ls", "args": {}}
    steps = []
    parts: list[dict[str, Any]] = [{"type": "text", "text": "a"}]
    for name, change in [
        ("a reasoning part turning finished", lambda p: p.append({**reasoning, "finished": True})),
        ("a new tool-call part", lambda p: p.append(dict(call))),
        ("a tool-call part turning finished", lambda p: p[-1].update(finished=True)),
        ("a finish part", lambda p: p.append({"type": "finish", "reason": "stop"})),
    ]:
        if name == "a reasoning part turning finished":
            parts.append(dict(reasoning))  # the unfinished reasoning, a plain delta
        else:
            parts[0] = {"type": "text", "text": parts[0]["text"] + "a"}
        steps.append((f"a delta before {name}", copy.deepcopy(parts)))
        change(parts)
        steps.append((name, copy.deepcopy(parts)))
    return steps


@pytest.mark.requirement("CW-2a")
async def test_structural_change_is_written_before_update_returns(store, open_store):
    """With a window that never ends, each structural change is in the row once update returns."""
    reader = await open_store(name="reader")
    turn = await streaming_turn(reader)
    async with opened_writer(store, VirtualClock()) as writer:
        for i, (name, parts) in enumerate(structural_steps()):
            content = f"content {i}"
            await update(writer, turn, content, parts)
            if name.startswith("a delta before"):
                continue
            got = await row(reader, turn)
            assert got is not None, f"{name}: the row is gone"
            assert (got.content, got.parts) == (content, parts), (
                f"{name}: update returned before writing it; the row holds "
                f"{(got.content, got.parts)!r}"
            )


# CW-3 ---------------------------------------------------------------------------------------


@pytest.mark.requirement("CW-3a")
@pytest.mark.parametrize("newer", [False, True], ids=["same-state", "newer-state"])
@on_the_wire
async def test_flush_waits_for_the_timer_write_in_flight(faulty_store, open_store, newer):
    """A timer write held in flight: flush(id) returns only after it, with the latest state
    durable (also when a newer state was given while the write was held)."""
    reader = await open_store(name="reader")
    turn = await streaming_turn(reader)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        wire = Wire(replica.gate)
        held = await debounced_write_held(writer, wire, clock, turn, "timer write")
        latest = "timer write"
        if newer:
            latest = "given while the timer write was held"
            await update(writer, turn, latest, text_parts(latest))
        async with in_background(writer.flush(turn.assistant_message_id)) as flush:
            await settle(clock)
            returned_while_held = flush.done
            replica.gate.release(held)
        flush.result()
        assert not returned_while_held, "flush(id) returned while the timer's write was in flight"
        await assert_row(reader, turn, latest, "once flush(id) returned")


# CW-4 ---------------------------------------------------------------------------------------


@pytest.mark.requirement("CW-4a")
@on_the_wire
async def test_flush_all_covers_dirty_and_in_flight_ids(faulty_store, open_store):
    """flush_all waits for an id whose timer write is in flight, first with every other id
    written, then with another id dirty: every latest state is durable once it returns."""
    reader = await open_store(name="reader")
    written, in_flight = await streaming_turn(reader), await streaming_turn(reader)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        await update(writer, written, "written", text_parts("written"))
        await writer.flush(written.assistant_message_id)
        wire = Wire(replica.gate)

        held = await debounced_write_held(writer, wire, clock, in_flight, "in flight")
        async with in_background(writer.flush_all()) as flush_all:
            await settle(clock)
            returned_while_held = flush_all.done
            replica.gate.release(held)
        flush_all.result()
        assert not returned_while_held, (
            "flush_all returned while an id's timer write was in flight (no id was dirty)"
        )
        await assert_row(reader, in_flight, "in flight", "once flush_all returned")

        held = await debounced_write_held(writer, wire, clock, in_flight, "in flight again")
        await update(writer, written, "dirty", text_parts("dirty"))
        async with in_background(writer.flush_all()) as flush_all:
            await settle(clock)
            returned_while_held = flush_all.done
            replica.gate.release(held)
        flush_all.result()
        assert not returned_while_held, "flush_all returned while an id's write was in flight"
        await assert_row(reader, in_flight, "in flight again", "the id in flight, after flush_all")
        await assert_row(reader, written, "dirty", "the dirty id, after flush_all")


# CW-5 ---------------------------------------------------------------------------------------


async def assert_nothing_written_after_delete(
    reader: TurnStore, turn: Turn, writer, wire: Wire, clock: VirtualClock, replica: TurnStore
) -> None:
    """Windows end, everything is flushed: the deleted id is never written again. A read on
    the writer's own connection (`replica`), answered only after every statement the writer
    sent before it, makes sure a late write has reached the wire before the wire is read."""
    after_delete = wire.count()
    await clock.advance(10 * WINDOW.total_seconds())
    await writer.flush_all()
    await writer.flush(turn.assistant_message_id)
    await settle(clock)
    await replica.list_messages(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    late = wire.texts()[after_delete:-1]
    assert not late, f"the writer wrote after delete returned: {late}"
    assert await row(reader, turn) is None, "the deleted row exists again"


@pytest.mark.requirement("CW-5a")
@on_the_wire
async def test_delete_drops_pending_state(faulty_store, open_store):
    """delete with a window armed: no timer, flush or flush_all writes the id again."""
    reader = await open_store(name="reader")
    turn = await streaming_turn(reader)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        wire = Wire(replica.gate)
        await update(writer, turn, "pending", text_parts("pending"))
        premise(wire.count() == 0, "update wrote a plain text delta at once (CW-1)")
        await writer.delete(turn.assistant_message_id, turn.workspace_id)
        await assert_nothing_written_after_delete(reader, turn, writer, wire, clock, replica.store)


@pytest.mark.requirement("CW-5b")
@on_the_wire
async def test_delete_during_a_write_in_flight(faulty_store, open_store):
    """delete while a timer write of the id is held, a newer state pending behind it: once
    the write lands and delete returns, nothing writes the id again."""
    reader = await open_store(name="reader")
    turn = await streaming_turn(reader)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        wire = Wire(replica.gate)
        held = await debounced_write_held(writer, wire, clock, turn, "in flight")
        await update(writer, turn, "newer, pending", text_parts("newer, pending"))
        async with in_background(
            writer.delete(turn.assistant_message_id, turn.workspace_id)
        ) as delete:
            await settle(clock)
            replica.gate.release(held)
        delete.result()
        await assert_nothing_written_after_delete(reader, turn, writer, wire, clock, replica.store)


# CW-6 ---------------------------------------------------------------------------------------

DELTA = st.text(STORABLE_TEXT, min_size=1, max_size=8)
"""A text delta: any text PostgreSQL stores (no NUL)."""

STEP = st.one_of(
    st.tuples(st.just("text"), DELTA),
    st.tuples(st.just("reasoning"), DELTA),
    st.tuples(st.just("end-reasoning")),
    st.tuples(st.just("tool-start")),
    st.tuples(st.just("tool-finish")),
    st.tuples(st.just("advance"), st.integers(min_value=0, max_value=3)),
)
"""One thing a stream does; `advance` moves the debounced writer's clock by thirds of a window."""


class Stream:
    """An answer being streamed: content and parts after each step (what `update` gets)."""

    def __init__(self) -> None:
        self.content = ""
        self.parts: list[dict[str, Any]] = []
        self.calls = 0

    def apply(self, step: tuple[Any, ...]) -> bool:
        """Apply `step`; False when it changes nothing to write (an advance, a no-op)."""
        kind, last = step[0], (self.parts[-1] if self.parts else {})
        if kind == "text":
            self.content += step[1]
            if last.get("type") == "text":
                last["text"] += step[1]
            else:
                self.parts.append({"type": "text", "text": step[1]})
        elif kind == "reasoning":
            if last.get("type") == "reasoning" and not last.get("finished"):
                last["text"] += step[1]
            else:
                self.parts.append({"type": "reasoning", "text": step[1]})
        elif kind == "end-reasoning" and last.get("type") == "reasoning":
            last["finished"] = True
        elif kind == "tool-start":
            self.calls += 1
            self.parts.append({"type": "tool-call", "toolCallId": f"call-{self.calls}"})
        elif kind == "tool-finish":
            open_calls = [p for p in self.parts if p["type"] == "tool-call" and "finished" not in p]
            if not open_calls:
                return False
            open_calls[0].update(finished=True, result="ok")
        elif kind == "finish":
            self.parts.append({"type": "finish", "reason": "stop"})
        else:
            return False
        return True


@pytest.mark.requirement("CW-6a")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(STEP, max_size=25))
async def test_final_row_is_the_same_as_without_debounce(store, steps):
    """Any stream (text, reasoning, tool calls starting and finishing, clock advances, then a
    finish part), flushed: the row equals the one a debounce-0 writer leaves."""
    debounced_turn, immediate_turn = await streaming_turn(store), await streaming_turn(store)
    clock = VirtualClock()
    stream = Stream()
    async with (
        opened_writer(store, clock) as debounced,
        opened_writer(store, clock, debounce=timedelta(0)) as immediate,
    ):
        for step in [*steps, ("finish",)]:
            if step[0] == "advance":
                await clock.advance(WINDOW.total_seconds() * step[1] / 3)
            if stream.apply(step):
                for writer, turn in ((debounced, debounced_turn), (immediate, immediate_turn)):
                    await update(writer, turn, stream.content, copy.deepcopy(stream.parts))
        await debounced.flush(debounced_turn.assistant_message_id)
    with_debounce, without = await row(store, debounced_turn), await row(store, immediate_turn)
    assert with_debounce is not None
    assert without is not None
    assert (with_debounce.status, with_debounce.content, with_debounce.parts) == (
        without.status,
        without.content,
        without.parts,
    ), f"steps {steps}: the debounced writer's final row differs from debounce 0's"


# CW-7 ---------------------------------------------------------------------------------------


@pytest.mark.requirement("CW-7a")
@on_the_wire
async def test_debounced_write_after_finalize_changes_nothing(faulty_store, open_store):
    """A timer write held until another replica finalized, then released, and a delta after
    that, flushed: the row stays finalized, with the finalize's content."""
    finisher = await open_store(name="finisher")
    turn = await streaming_turn(finisher)
    replica = await faulty_store(name="writer")
    clock = VirtualClock()
    async with opened_writer(replica.store, clock, gate=replica.gate) as writer:
        wire = Wire(replica.gate)
        held = await debounced_write_held(writer, wire, clock, turn, "late delta")
        finalized = await finisher.finalize(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            status="completed",
            content="final answer",
            parts=text_parts("final answer"),
            usage=None,
        )
        assert finalized is True, "finalize of a streaming row returned False"
        replica.gate.release(held)
        await wire.completed(1)
        await update(writer, turn, "later delta", text_parts("later delta"))
        await writer.flush(turn.assistant_message_id)
    got = await row(finisher, turn)
    assert got is not None
    assert (got.status, got.content) == ("completed", "final answer"), (
        f"a debounced write after finalize changed the row to {got.status!r} {got.content!r}"
    )
