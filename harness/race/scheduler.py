"""One interleaving's moves: start the actors, let a chooser move one at a time among those
that can move, until all finished, and never hang.

After every move the scheduler waits until the actor that moved is parked again: held at
its gate, executed with its commit held, finished, or blocked on another's lock. The gate
and the actor wake it on every change; PostgreSQL is asked about lock waits only after a
silence of the actor that moved, and about the actors already seen blocked after each
move (one question for all of them). Faults (Cut, Terminate, Kill) come from forced
schedules.
"""

from __future__ import annotations

import contextlib
import enum
import time
from dataclasses import dataclass, field

import anyio

from harness.errors import HarnessError
from harness.proxy.statement_gate import StatementEvent
from harness.race.actor_gate import ActorGate
from harness.race.actors import Actor, Killable
from harness.race.blocking import BlockingMonitor
from harness.race.errors import InvalidInterleaving, InvalidRace
from harness.race.outcome import Fault, LockWait
from harness.race.schedule import (
    Cut,
    Kill,
    Schedule,
    ScheduleEntry,
    Step,
    Terminate,
    format_schedule,
)
from harness.race.strategies import Chooser, Decision

QUIET_FIRST = 0.002
"""How long a moved actor may show no progress before PostgreSQL is asked whether it
waits on a lock; doubled on each further silence, up to QUIET_MAX."""
QUIET_MAX = 0.05
MAX_DECISIONS = 5000


class _Parked(enum.Enum):
    HELD = "held before its next statement"
    AT_COMMIT = "executed, its commit held"
    BLOCKED = "waiting on another's lock"
    DONE = "finished"


_MOVABLE = (_Parked.HELD, _Parked.AT_COMMIT)


@dataclass
class Trace:
    """The decisions of one interleaving and what was chosen at each."""

    decisions: list[Decision] = field(default_factory=list)
    entries: list[ScheduleEntry] = field(default_factory=list)

    def add(self, decision: Decision, entry: ScheduleEntry) -> None:
        self.decisions.append(decision)
        self.entries.append(entry)

    def indices(self) -> list[int]:
        """The choice index of each decision (faults, never chosen by search, count as 0)."""
        return [
            d.enabled.index(e.actor) if isinstance(e, Step) and e.actor in d.enabled else 0
            for d, e in zip(self.decisions, self.entries, strict=True)
        ]

    def statements(self, actor: str) -> int:
        """How many statements (or operations) the actor started: its steps that were no
        commit."""
        return sum(
            1
            for d, e in zip(self.decisions, self.entries, strict=True)
            if e == Step(actor) and actor not in d.at_commit
        )

    def shortest(self) -> Schedule:
        """The schedule without its trailing non-preemptive steps, which a forced replay
        takes by itself."""
        entries = list(self.entries)
        while entries and entries[-1] == Step(self.decisions[len(entries) - 1].enabled[0]):
            entries.pop()
        return tuple(entries)


class Scheduler:
    """Moves one interleaving's actors, one step at a time, as a chooser says."""

    def __init__(self, statement_level: bool, step_timeout: float) -> None:
        self.statement_level = statement_level
        self.step_timeout = step_timeout

    async def perform(
        self,
        chooser: Chooser,
        actors: list[Actor],
        monitor: BlockingMonitor,
        transcript: list[str],
        race: str,
        trace: Trace,
    ) -> None:
        """Start the actors, let the chooser move them until all finished; never hang."""
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            for actor in actors:
                tasks.start_soon(actor.run, not self.statement_level)
            try:
                await self._drive(chooser, actors, monitor, transcript, trace)
            except Exception as exc:  # raised after the group, not wrapped in a group
                failure = exc
            if failure is not None:  # let the actors fail on their cut connections
                for actor in actors:
                    if actor.gate is not None:
                        actor.gate.cut()
                    actor.stop()
                with anyio.move_on_after(self.step_timeout):
                    for actor in actors:
                        while not actor.done:
                            await actor.progress.wait()
                tasks.cancel_scope.cancel()
        if isinstance(failure, TimeoutError):
            raise HarnessError(
                f"race {race!r} under schedule [{format_schedule(trace.entries)}]: a step never "
                f"completed within {self.step_timeout:g} s (neither finished nor blocked on a "
                "lock)\n" + "\n".join(transcript)
            )
        if failure is not None:
            raise failure

    async def _drive(
        self,
        chooser: Chooser,
        actors: list[Actor],
        monitor: BlockingMonitor,
        transcript: list[str],
        trace: Trace,
    ) -> None:
        by_name = {a.name: a for a in actors}
        parked = {a.name: await self._settle(a, monitor) for a in actors}
        last: str | None = None
        while True:
            await self._recheck_blocked(actors, parked, monitor, transcript)
            enabled = [a.name for a in actors if parked[a.name] in _MOVABLE]
            if last in enabled:  # index 0 is the non-preemptive choice
                enabled.insert(0, enabled.pop(enabled.index(last)))
            blocked = [a.name for a in actors if parked[a.name] is _Parked.BLOCKED]
            if not enabled:
                if not blocked:
                    return  # every actor finished
                await self._await_any_progress([by_name[n] for n in blocked])
                continue
            if len(trace.entries) >= MAX_DECISIONS:
                raise HarnessError(f"more than {MAX_DECISIONS} steps: does an operation loop?")
            decision = Decision(
                len(trace.entries),
                tuple(enabled),
                tuple(blocked),
                tuple(a.name for a in actors if parked[a.name] is _Parked.DONE),
                tuple(n for n in enabled if parked[n] is _Parked.AT_COMMIT),
            )
            entry = chooser.choose(decision)
            trace.add(decision, entry)
            actor = by_name[entry.actor]
            moved_at = time.monotonic()
            if isinstance(entry, Step):
                self._step(actor, parked[actor.name], transcript)
                last = actor.name
            else:
                await self._fault(entry, actor, monitor, transcript)
                actor.faults.append(
                    Fault(actor.name, str(entry), moved_at, transcript[-1].removeprefix("fault: "))
                )
            line = len(transcript) - 1
            parked[actor.name] = await self._settle(actor, monitor)
            if parked[actor.name] is _Parked.BLOCKED:
                blockers = tuple(await monitor.blockers(actor.application_name))
                actor.waits.append(LockWait(actor.name, blockers, started_at=moved_at))
                transcript[line] += f" <waiting ...> (on {', '.join(blockers)})"

    async def _recheck_blocked(
        self,
        actors: list[Actor],
        parked: dict[str, _Parked],
        monitor: BlockingMonitor,
        transcript: list[str],
    ) -> None:
        """Actors seen blocked: one question to PostgreSQL for all; settle those let go."""
        waiting = [a for a in actors if parked[a.name] is _Parked.BLOCKED]
        if not waiting:
            return
        still = await monitor.blocked([a.application_name for a in waiting])
        for actor in waiting:
            if actor.application_name not in still:
                parked[actor.name] = await self._settle(actor, monitor)
                if parked[actor.name] is not _Parked.BLOCKED:
                    if actor.waits and actor.waits[-1].ended_at is None:
                        actor.waits[-1].ended_at = time.monotonic()
                    transcript.append(f"step {actor.name}: <... completed>")

    async def _await_any_progress(self, actors: list[Actor]) -> None:
        """Every unfinished actor waits on a lock (a deadlock PostgreSQL will break, or a
        lock held outside the race): wait, bounded, for one of them to move."""
        with anyio.move_on_after(QUIET_MAX), contextlib.suppress(Exception):
            async with anyio.create_task_group() as group:
                for actor in actors:
                    group.start_soon(_set_then_cancel, actor.progress, group.cancel_scope)

    def _step(self, actor: Actor, parked: _Parked, transcript: list[str]) -> None:
        if not self.statement_level:
            actor.permit()
            operation = actor.ops[actor.permits_given - 1].operation
            transcript.append(f"step {actor.name}: {operation}")
            return
        gate = actor.gate
        assert gate is not None
        event = gate.parked()
        if event is None:
            raise HarnessError(f"{actor.name} was parked and is not any more (gate state lost)")
        text = gate.text(event)
        if parked is _Parked.AT_COMMIT:  # its Sync: a commit, unless a transaction is open
            text = f"{'complete' if event.in_transaction else 'commit'} ({text})"
        gate.release(event)
        transcript.append(f"step {actor.name}: {text}")

    async def _fault(
        self, fault: ScheduleEntry, actor: Actor, monitor: BlockingMonitor, transcript: list[str]
    ) -> None:
        held = actor.gate.parked() if actor.gate is not None else None
        await self._inflict(fault, actor, monitor, transcript)
        if held is not None and actor.gate is not None:  # until the gate sees it dead
            await actor.gate.wait_finished(held, timeout=self.step_timeout)

    async def _inflict(
        self, fault: ScheduleEntry, actor: Actor, monitor: BlockingMonitor, transcript: list[str]
    ) -> None:
        if isinstance(fault, Cut):
            self._gate_of(actor, fault).cut()
            transcript.append(f"fault: {actor.name}'s connections cut at the proxy")
        elif isinstance(fault, Terminate):
            ended = await monitor.terminate(actor.application_name)
            transcript.append(f"fault: {actor.name}'s backend terminated ({ended} ended)")
        elif isinstance(fault, Kill) and fault.after_send:
            await self._kill_after_send(actor, fault, transcript)
        elif isinstance(fault, Kill):
            await _killable(actor).kill()
            if actor.gate is not None:
                actor.gate.cut()  # what it held at the gate, it never sent
            transcript.append(f"fault: {actor.name}'s process killed (SIGKILL)")

    async def _kill_after_send(self, actor: Actor, fault: Kill, transcript: list[str]) -> None:
        """Freeze the process, so it cannot see what follows; let its held statement (or
        commit) reach the server; cut the connection as the answer starts; then kill."""
        process, gate = _killable(actor), self._gate_of(actor, fault)
        event = gate.parked()
        if event is None:
            raise InvalidInterleaving(f"{fault}: {actor.name} has no statement held to send")
        if not event.received_whole:  # describe-first: its Bind/Execute/Sync follow an answer
            event = await self._second_flight(gate, event)
        process.freeze()
        gate.cut_after_send(event)
        finished = await gate.wait_finished(event, timeout=self.step_timeout)
        await process.kill()
        answered = "the server answered, the answer was cut" if finished.cut else "it ended"
        transcript.append(
            f"fault: {actor.name}'s {gate.text(event)} sent ({answered}); "
            "its process killed (SIGKILL) before it could learn the outcome"
        )

    async def _second_flight(self, gate: ActorGate, event: StatementEvent) -> StatementEvent:
        """Let a describe-first statement's first flight through and wait until its second
        is parked at its Sync: a frozen process would never send that second flight."""
        gate.release(event)
        with anyio.fail_after(self.step_timeout):
            while True:
                version = gate.version()
                parked = gate.parked()
                if parked is not None and parked.seq == event.seq and parked.sync_held:
                    return parked
                await gate.wait_changed(version, self.step_timeout)

    def _gate_of(self, actor: Actor, fault: ScheduleEntry) -> ActorGate:
        if actor.gate is None:
            raise InvalidRace(f"{fault} needs statement level (the network capability)")
        return actor.gate

    async def _settle(self, actor: Actor, monitor: BlockingMonitor) -> _Parked:
        """Wait until the actor is parked, finished or blocked. Woken by the gate and the
        actor; PostgreSQL is asked about locks only after a silence."""
        quiet = QUIET_FIRST
        with anyio.fail_after(self.step_timeout):
            while True:
                progress = actor.progress
                version = actor.gate.version() if actor.gate is not None else None
                state = self._state(actor)
                if state is not None:
                    return state
                if await _changed(actor, progress, version, quiet):
                    continue
                if await monitor.blockers(actor.application_name):
                    actor.was_blocked = True
                    return _Parked.BLOCKED
                quiet = min(quiet * 2, QUIET_MAX)

    def _state(self, actor: Actor) -> _Parked | None:
        if actor.done:
            return _Parked.DONE
        if actor.gate is None:
            return _Parked.HELD if actor.awaiting_permit else None
        event = actor.gate.parked()
        if event is None:
            return None
        return _Parked.HELD if event.held else _Parked.AT_COMMIT

    # -- set-up, check, actors ------------------------------------------------------------


async def _changed(
    actor: Actor,
    progress: anyio.Event,
    version: object,
    timeout: float,  # noqa: ASYNC109
) -> bool:
    """Until the actor's gate changes or one of its operations returns (True), or
    `timeout` passes without either (False)."""
    if actor.gate is None:
        with anyio.move_on_after(timeout):
            await progress.wait()
            return True
        return False
    gate = actor.gate
    changed = False

    async def on_gate(scope: anyio.CancelScope) -> None:
        nonlocal changed
        changed = await gate.wait_changed(version, timeout) or changed
        scope.cancel()

    async def on_actor(scope: anyio.CancelScope) -> None:
        nonlocal changed
        await progress.wait()
        changed = True
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(on_gate, group.cancel_scope)
        group.start_soon(on_actor, group.cancel_scope)
    return changed


async def _set_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _killable(actor: Actor) -> Killable:
    if not isinstance(actor.store, Killable):
        raise InvalidRace(
            f"cannot kill {actor.name}: its store runs in this process; "
            "a race that kills sets Race(processes=True)"
        )
    return actor.store
