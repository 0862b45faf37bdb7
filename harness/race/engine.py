"""The race engine: run a Race under one schedule, or under every interleaving.

At statement level (adapters with the `network` capability) a schedule names,
one entry per step, which actor moves next. An actor's step is one hold point
of its next statement: "execute" lets the statement reach PostgreSQL and run
up to its Sync (extended protocol), so it is executed but not committed;
"commit" lets the Sync through. A simple-protocol statement is a single step.
After every step the engine waits until each actor is parked again: held at
its gate, executed and waiting for its commit, blocked on another's lock (as
pg_blocking_pids says, like PostgreSQL's isolation tester), or finished.
Entries "cut:NAME" and "terminate:NAME" cut an actor's connections at the
proxy or end its backend: the faults of a writer dying mid-transaction. For a
race whose actors run in processes of their own, "kill:NAME" SIGKILLs the
actor's process wherever it is (between operations, or with a statement held at
its gate, which it then never sent), and "kill-after-send:NAME" lets its held
statement or commit reach PostgreSQL and kills the process before the answer
comes back: the crash after COMMIT whose outcome the writer never learned.

At operation level a step is a whole operation. Each interleaving runs on a
fresh database, so one cannot leak into the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import psycopg

from harness.contract import Adapter
from harness.db_clock import DatabaseClock
from harness.driver.client import DriverStore
from harness.errors import HarnessError
from harness.postgres.databases import DatabaseFactory, with_params
from harness.proxy.server import RunningProxyServer
from harness.race.actors import Actor, application_name
from harness.race.blocking import BlockingMonitor
from harness.race.history import History
from harness.race.interleavings import count_interleavings, interleavings
from harness.race.outcome import RaceOutcome
from harness.race.scenario import Context, Op, Produced, Race

POLL_SECONDS = 0.002
FAULTS = ("cut", "terminate", "kill", "kill-after-send")


ScheduleMaker = Callable[[dict[str, int]], Sequence[tuple[str, ...]]]
"""Makes the schedules to run from each actor's discovered number of steps."""


class InvalidInterleaving(Exception):
    """The schedule asks a blocked actor to move: no real execution has that order."""


class RaceFailure(AssertionError):
    """An interleaving broke the scenario's check; carries the transcript and the schedule."""

    def __init__(self, message: str, outcome: RaceOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class _Parked(enum.Enum):
    HELD = "held before its next statement"
    AT_COMMIT = "executed, its commit held"
    BLOCKED = "waiting on another's lock"
    DONE = "finished"


@dataclass
class Exploration:
    """What exploring a race covered: counts, for the report and the vacuity check."""

    race: str
    level: str
    total: int
    run: int = 0
    invalid: int = 0
    produced: int = 0
    schedules: list[tuple[str, ...]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.race}: {self.run} of {self.total} {self.level}-level interleavings run "
            f"({self.invalid} impossible), the race produced in {self.produced}"
        )


class RaceEngine:
    """Runs races for one adapter on one server; a pytest fixture hands it to scenarios."""

    def __init__(
        self,
        adapter: Adapter,
        databases: DatabaseFactory,
        proxies: RunningProxyServer | None,
        *,
        process_adapter: Callable[[], Adapter] | None = None,
        step_timeout: float = 10.0,
        forced_schedule: tuple[str, ...] | None = None,
        sample: int = 200,
        seed: int = 0,
        rerun: Callable[[tuple[str, ...]], str] | None = None,
    ) -> None:
        self.adapter = adapter
        self.process_adapter = process_adapter
        self.databases = databases
        self.proxies = proxies
        self.step_timeout = step_timeout
        self.forced_schedule = forced_schedule
        self.sample = sample
        self.seed = seed
        self.rerun = rerun
        self._counter = 0

    @property
    def statement_level(self) -> bool:
        return self.proxies is not None

    @property
    def level(self) -> str:
        return "statement" if self.statement_level else "operation"

    # -- public -------------------------------------------------------------------------
    async def explore(self, race: Race, *, schedules: ScheduleMaker | None = None) -> Exploration:
        """Run the race under every interleaving of its actors' steps (a seeded sample of
        them when there are more than `sample`), or under the schedules `schedules`
        makes from the discovered step counts (e.g. `round_robin`).

        Raises RaceFailure at the first interleaving whose check fails, and
        HarnessError when no interleaving produced the race.
        """
        __tracebackhide__ = True
        if self.forced_schedule is not None:
            return await self.run_schedules(race, [self.forced_schedule])
        steps = await self.discover(race)
        total = count_interleavings(steps)
        if schedules is not None:
            chosen: Sequence[tuple[str, ...]] = schedules(steps)
        elif total <= self.sample:
            chosen = list(interleavings(steps))
        else:
            chosen = _sampled(steps, self.sample, random.Random(self.seed))
        exploration = await self.run_schedules(race, chosen)
        exploration.total = total
        return exploration

    async def run_schedules(self, race: Race, schedules: Sequence[tuple[str, ...]]) -> Exploration:
        """Run the given schedules only; each must be possible, one must produce the race."""
        __tracebackhide__ = True
        exploration = Exploration(race.name, self.level, total=len(schedules))
        missing = self._wanted(race)
        for schedule in schedules:
            try:
                outcome = await self.run(race, schedule)
            except InvalidInterleaving:
                exploration.invalid += 1
                continue
            exploration.run += 1
            exploration.schedules.append(schedule)
            produced = [p for p in self._wanted(race) if p.happened(outcome)]
            exploration.produced += bool(produced)
            missing = [p for p in missing if p not in produced]
        if missing:
            raise HarnessError(
                f"race {race.name!r}: in {exploration.run} {self.level}-level interleavings "
                f"({exploration.invalid} impossible) this never happened: "
                + "; ".join(p.description for p in missing)
                + ". A race that did not happen proves nothing, so there is no verdict"
            )
        return exploration

    def _wanted(self, race: Race) -> list[Produced]:
        return [p for p in race.produced if self.statement_level or not p.statement_level_only]

    async def discover(self, race: Race) -> dict[str, int]:
        """Each actor's number of steps, from a solo run of it on its own fresh database."""
        steps: dict[str, int] = {}
        for name in race.actors:
            solo = dataclasses.replace(race, actors={name: race.actors[name]}, produced=())
            outcome = await self.run(solo, (), check=False, hold=False)
            if self.statement_level:
                steps[name] = sum(2 if s.executes else 1 for s in outcome.statements[name])
            else:
                steps[name] = len(race.actors[name])
        return steps

    async def run(
        self,
        race: Race,
        schedule: Sequence[str],
        *,
        check: bool = True,
        hold: bool = True,
    ) -> RaceOutcome:
        """One interleaving on a fresh database; raises RaceFailure if the check fails."""
        __tracebackhide__ = True
        dsn = self.databases.create()  # ~10 ms; no worker thread a Ctrl-C could strand
        try:
            return await self._run_on(dsn, race, tuple(schedule), check=check, hold=hold)
        finally:
            self.databases.drop(dsn)

    # -- one interleaving ---------------------------------------------------------------
    async def _run_on(
        self, dsn: str, race: Race, schedule: tuple[str, ...], *, check: bool, hold: bool
    ) -> RaceOutcome:
        __tracebackhide__ = True
        control = with_params(dsn, application_name="turnproof-control")
        clock = await DatabaseClock.connect(control)
        try:
            context = await self._setup(race, dsn, clock)
            outcome = await self._interleave(dsn, race, schedule, context, hold=hold)
            outcome.finished_at = await clock.now()
        finally:
            await clock.aclose()
        if check:
            await self._check(race, outcome, dsn)
        return outcome

    async def _interleave(
        self, dsn: str, race: Race, schedule: tuple[str, ...], context: Context, *, hold: bool
    ) -> RaceOutcome:
        history, transcript = History(), [f"schedule: {', '.join(schedule) or '(solo run)'}"]
        monitor = await BlockingMonitor.connect(
            with_params(dsn, application_name="turnproof-control")
        )
        actors: list[Actor] = []
        try:
            adapter = self._actors_adapter(race)
            for name, ops in race.actors.items():
                actors.append(
                    await self._open_actor(adapter, name, ops, dsn, context, history, transcript)
                )
            if hold:
                for actor in actors:
                    self._arm(actor, actor.next_seq)
            await self._perform(schedule, actors, monitor, transcript, race.name)
            outcome = RaceOutcome(
                race=race.name,
                schedule=schedule,
                context=context,
                history=history,
                statements={a.name: a.statements() for a in actors},
                waited={a.name for a in actors if a.was_blocked},
                transcript=transcript,
            )
        finally:
            await monitor.aclose()
            for actor in actors:
                await self._close_actor(actor)
        return outcome

    async def _perform(
        self,
        schedule: tuple[str, ...],
        actors: list[Actor],
        monitor: BlockingMonitor,
        transcript: list[str],
        race: str,
    ) -> None:
        """Start the actors, follow the schedule, then let them finish; never hang."""
        bound = self.step_timeout * (len(schedule) + len(actors) + 1)
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            for actor in actors:
                tasks.start_soon(actor.run, not self.statement_level)
            try:
                with anyio.fail_after(bound):
                    await self._follow(schedule, actors, monitor, transcript)
                    await self._drain(actors)
            except Exception as exc:  # raised after the group, not wrapped in a group
                failure = exc
            if failure is not None:  # let the actors fail on their cut connections
                for actor in actors:
                    self._cut(actor)
                    actor.stop()
                with anyio.move_on_after(self.step_timeout):
                    await _all_done(actors)
                tasks.cancel_scope.cancel()
        if isinstance(failure, TimeoutError):
            raise HarnessError(
                f"race {race!r} under schedule {list(schedule)}: a step never completed "
                f"within {self.step_timeout:g} s (neither finished nor blocked on a lock)\n"
                + "\n".join(transcript)
            )
        if failure is not None:
            raise failure

    async def _setup(self, race: Race, dsn: str, clock: DatabaseClock) -> Context:
        store = await self.adapter.connect(with_params(dsn, application_name="turnproof-setup"))
        try:
            return dict(await race.setup(store, clock))
        finally:
            await store.aclose()

    async def _check(self, race: Race, outcome: RaceOutcome, dsn: str) -> None:
        __tracebackhide__ = True
        outcome.reader = await self.adapter.connect(
            with_params(dsn, application_name="turnproof-reader")
        )
        try:
            await race.check(outcome)
        except AssertionError as exc:
            rerun = f"\n{self.rerun(outcome.schedule)}" if self.rerun else ""
            raise RaceFailure(
                f"{race.name}: {exc}\n\ntranscript:\n{outcome.describe()}{rerun}", outcome
            ) from None
        finally:
            await outcome.reader.aclose()
            outcome.reader = None

    def _actors_adapter(self, race: Race) -> Adapter:
        if not race.processes:
            return self.adapter
        if self.process_adapter is None:
            raise HarnessError(
                f"race {race.name!r} runs its actors in processes of their own, and this "
                "engine was given no process adapter (the race_engine fixture has one)"
            )
        return self.process_adapter()

    async def _open_actor(
        self,
        adapter: Adapter,
        name: str,
        ops: list[Op],
        dsn: str,
        context: Context,
        history: History,
        transcript: list[str],
    ) -> Actor:
        proxy = gate = None
        if self.proxies is not None:
            self._counter += 1
            proxy = self.proxies.create_proxy(f"actor-{name}-{self._counter}", _host_port(dsn))
            gate = proxy.gate()
            dsn = with_params(dsn, host="127.0.0.1", port=str(proxy.port))
        store = await adapter.connect(with_params(dsn, application_name=application_name(name)))
        actor = Actor(name, ops, store, history, context, transcript, proxy=proxy, gate=gate)
        if gate is not None:  # statements sent while connecting are not scheduled
            actor.next_seq = len(gate.events) + 1
        return actor

    async def _close_actor(self, actor: Actor) -> None:
        with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
            await actor.store.aclose()  # a cut connection may refuse a clean close
        if actor.proxy is not None and self.proxies is not None:
            name = actor.proxy.name
            self.proxies.call(lambda registry: registry.delete_proxy(name))

    # -- scheduling ---------------------------------------------------------------------
    def _arm(self, actor: Actor, seq: int) -> None:
        gate = actor.gate
        if gate is not None:
            gate.hold_before(seq)
            gate.hold_sync(seq)

    async def _follow(
        self,
        schedule: tuple[str, ...],
        actors: list[Actor],
        monitor: BlockingMonitor,
        transcript: list[str],
    ) -> None:
        by_name = {a.name: a for a in actors}
        parked = {a.name: await self._settle(a, monitor) for a in actors}
        for entry in schedule:
            fault, _, name = entry.rpartition(":")
            actor = by_name.get(name)
            if actor is None or (fault and fault not in FAULTS):
                raise HarnessError(f"schedule entry {entry!r}: no such actor or fault")
            if fault:
                await self._fault(fault, actor, monitor, transcript)
            elif parked[name] is _Parked.DONE:
                transcript.append(f"step {name}: (finished, nothing left to run)")
                continue
            elif parked[name] is _Parked.BLOCKED:
                raise InvalidInterleaving(f"{name} is blocked and cannot move")
            else:
                await self._step(actor, parked[name], transcript)
            step_line = len(transcript) - 1
            for other in actors:
                before = parked[other.name]
                parked[other.name] = await self._settle(other, monitor)
                if before is _Parked.BLOCKED and parked[other.name] is not _Parked.BLOCKED:
                    transcript.append(f"step {other.name}: <... completed>")
            if parked[name] is _Parked.BLOCKED:
                blockers = ", ".join(await monitor.blockers(actor.application_name))
                transcript[step_line] += f" <waiting ...> (on {blockers})"

    async def _step(self, actor: Actor, parked: _Parked, transcript: list[str]) -> None:
        if not self.statement_level:
            actor.permit()
            operation = actor.ops[actor.permits_given - 1].operation
            transcript.append(f"step {actor.name}: {operation}")
            return
        gate = actor.gate
        assert gate is not None
        seq = actor.next_seq
        text = _statement_text(gate, seq)
        if parked is _Parked.HELD:
            self._arm(actor, seq + 1)
            gate.release(seq)
            transcript.append(f"step {actor.name}: {text}")
        else:
            gate.release_sync(seq)
            transcript.append(f"step {actor.name}: commit ({text})")

    async def _fault(
        self, fault: str, actor: Actor, monitor: BlockingMonitor, transcript: list[str]
    ) -> None:
        in_flight = actor.next_seq
        if fault == "cut":
            self._cut(actor)
            transcript.append(f"fault: {actor.name}'s connections cut at the proxy")
        elif fault == "terminate":
            ended = await monitor.terminate(actor.application_name)
            transcript.append(f"fault: {actor.name}'s backend terminated ({ended} ended)")
        elif fault == "kill":
            await _process_of(actor).kill()
            self._cut(actor)  # what it held at the gate, it never sent
            transcript.append(f"fault: {actor.name}'s process killed (SIGKILL)")
        else:
            await self._kill_after_send(actor, in_flight, transcript)
        gate = actor.gate
        if gate is not None and len(gate.events) >= in_flight:  # until the gate sees it dead
            await gate.wait_completed(in_flight, timeout=self.step_timeout)

    async def _kill_after_send(self, actor: Actor, seq: int, transcript: list[str]) -> None:
        """Freeze the process, so it cannot see what follows; let its held statement (or
        commit) reach the server; cut the connection as the answer starts; then kill."""
        process, gate = _process_of(actor), actor.gate
        if gate is None:
            raise HarnessError(
                f"kill-after-send:{actor.name} needs statement level (the network capability)"
            )
        process.freeze()
        gate.cut_after_send(seq)
        event = await gate.wait_completed(seq, timeout=self.step_timeout)
        await process.kill()
        answered = "the server answered, the answer was cut" if event.cut else "it ended"
        transcript.append(
            f"fault: {actor.name}'s {_statement_text(gate, seq)} sent ({answered}); "
            "its process killed (SIGKILL) before it could learn the outcome"
        )

    def _cut(self, actor: Actor) -> None:
        if actor.gate is not None:
            actor.gate.cut()

    async def _settle(self, actor: Actor, monitor: BlockingMonitor) -> _Parked:
        """Wait until the actor is parked; polling only bounds the wait for another process."""
        with anyio.fail_after(self.step_timeout):
            while True:
                state = await self._parked(actor, monitor)
                if state is not None:
                    if state is _Parked.BLOCKED:
                        actor.was_blocked = True
                    return state
                await anyio.sleep(POLL_SECONDS)

    async def _parked(self, actor: Actor, monitor: BlockingMonitor) -> _Parked | None:
        if actor.done:
            return _Parked.DONE
        if await monitor.blockers(actor.application_name):
            return _Parked.BLOCKED
        gate = actor.gate
        if gate is None:
            return _Parked.HELD if actor.awaiting_permit else None
        for event in gate.held:
            if event.seq != actor.next_seq:
                continue
            if event.held:
                return _Parked.HELD
            if event.sync_held and event.executed:
                return _Parked.AT_COMMIT
        finished = gate.events
        if len(finished) >= actor.next_seq and finished[actor.next_seq - 1].finished:
            actor.next_seq += 1  # a statement ended with nothing held: look at the next one
            return await self._parked(actor, monitor)
        return None

    async def _drain(self, actors: list[Actor]) -> None:
        """After the schedule: let every actor finish freely."""
        for actor in actors:
            if actor.gate is not None:
                actor.gate.open()
            for _ in range(len(actor.ops) - actor.permits_given):
                actor.permit()
        await _all_done(actors)


def _process_of(actor: Actor) -> DriverStore:
    if not isinstance(actor.store, DriverStore):
        raise HarnessError(
            f"cannot kill {actor.name}: its store runs in this process; "
            "a race that kills sets Race(processes=True)"
        )
    return actor.store


async def _all_done(actors: list[Actor]) -> None:
    for actor in actors:
        while not actor.done:  # noqa: ASYNC110 (the actor is another task)
            await anyio.sleep(POLL_SECONDS)


def _statement_text(gate: object, seq: int) -> str:
    events = gate.events  # type: ignore[attr-defined]
    text = events[seq - 1].text if len(events) >= seq else ""
    text = " ".join(text.split())
    return text if len(text) <= 90 else text[:87] + "..."


def _host_port(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"


def round_robin(steps: dict[str, int]) -> list[tuple[str, ...]]:
    """One schedule: each actor's next step in turn, A B C A B C ... (the worst case for
    check-then-act: every actor checks before any acts)."""
    left = dict(steps)
    order: list[str] = []
    while any(left.values()):
        for name in steps:
            if left[name]:
                order.append(name)
                left[name] -= 1
    return [tuple(order)]


def _sampled(steps: dict[str, int], count: int, rng: random.Random) -> list[tuple[str, ...]]:
    """`count` distinct random interleavings (each actor's order kept), reproducible by seed."""
    seen: set[tuple[str, ...]] = set()
    pool = [name for name, n in steps.items() for _ in range(n)]
    while len(seen) < count:
        rng.shuffle(pool)
        seen.add(tuple(pool))
    return sorted(seen)
