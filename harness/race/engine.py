"""The race engine: explore a Race under schedules chosen among the actors that can move.

At statement level (adapters with the `network` capability) every actor reaches
PostgreSQL through its own gated proxy listener, and each of its statements is held
twice: before it reaches the server, and executed before its commit (Sync). The
scheduler (harness.race.scheduler) moves one actor at a time among those that can
move; a chooser (harness.race.strategies) picks which: the choice tree for small races
(every schedule, fewest preemptions first), then PCT or random walks, Hypothesis to
search and to shrink a walk's failure (harness.race.shrinking). Step counts are never guessed
in advance; a forced schedule (a scenario's, `--race-schedule`, a rerun line) that asks
a blocked actor to move is an InvalidInterleaving naming the step.

At operation level a step is a whole operation. Each interleaving runs on a fresh
database (harness.postgres.fresh_databases), so one cannot leak into the next.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import NoReturn

import anyio
import psycopg

from harness.contract import Adapter, TurnStore
from harness.db_clock import DatabaseClock
from harness.errors import HarnessError, UsageError
from harness.postgres.databases import DatabaseFactory, database_name, with_params
from harness.postgres.fresh_databases import FreshDatabases
from harness.proxy.proxy import Proxy
from harness.proxy.registry import ProxyServer
from harness.proxy.server import RunningProxyServer
from harness.proxy.statement_gate import StatementGate
from harness.race.actor_gate import ActorGate
from harness.race.actors import Actor, application_name
from harness.race.blocking import BlockingMonitor
from harness.race.errors import InvalidInterleaving, InvalidRace, RaceFailure
from harness.race.exploration import Exploration, Phases
from harness.race.history import History
from harness.race.outcome import RaceOutcome
from harness.race.scenario import Context, Op, Produced, Race
from harness.race.schedule import (
    Schedule,
    Step,
    format_schedule,
    schedule_problem,
)
from harness.race.scheduler import Scheduler, Trace
from harness.race.shrinking import HypothesisSearch
from harness.race.strategies import (
    PCT,
    ChoiceTree,
    Chooser,
    Forced,
    Indexed,
    RandomWalk,
    pct_bound,
)
from harness.report.text_timeline import render_lanes
from harness.report.timeline import timeline_of

WALKS_UNTIL_PRODUCED = 10
"""Sampled schedules go on past --race-walks, up to this many times as many, until the
race was produced: a sample in which it never happened proves nothing."""
MODES = ("auto", "exhaustive", "pct", "random", "hypothesis")
DEFAULT_SAMPLE = 20
"""Schedules of the choice tree run (fewest preemptions first) before sampling takes over."""
DEFAULT_WALKS = 5

ScheduleMaker = Callable[[dict[str, int]], Sequence[Schedule]]
"""Makes forced schedules from each actor's number of steps in a non-preemptive run (for
fault scenarios: "the fault after the winner's k-th step")."""
StoreWrapper = Callable[[TurnStore], TurnStore]


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
        forced_schedule: Schedule | None = None,
        mode: str = "auto",
        sample: int = DEFAULT_SAMPLE,
        walks: int = DEFAULT_WALKS,
        seed: int = 0,
        pct_depth: int = 2,
        rerun: Callable[[Schedule], str] | None = None,
        store_wrapper: StoreWrapper | None = None,
        identity: str = "",
        transcript: bool = False,
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"--race-mode {mode!r}: give one of {', '.join(MODES)}")
        if sample < 1 or walks < 0 or pct_depth < 1:
            raise UsageError(
                f"--race-sample {sample}, --race-walks {walks}, --race-pct-depth {pct_depth}: "
                "give at least 1 schedule of the tree, 0 or more walks, a PCT depth of 1 or more"
            )
        self.adapter = adapter
        self.transcript = transcript
        """A failure shows the isolation-tester transcript under its timeline (pytest -v)."""
        self.process_adapter = process_adapter
        self.databases = databases
        self.proxies = proxies
        self.step_timeout = step_timeout
        self.forced_schedule = forced_schedule
        self.mode = mode
        self.sample = sample
        self.walks = walks
        self.seed = seed
        self.pct_depth = pct_depth
        self.rerun = rerun
        self.store_wrapper = store_wrapper
        self.identity = identity
        self.explorations: list[Exploration] = []
        self.phases = Phases()
        self._control: psycopg.AsyncConnection | None = None
        self._fresh = FreshDatabases(databases)
        self._control_dsn = ""
        self._counter = 0

    @property
    def statement_level(self) -> bool:
        return self.proxies is not None

    @property
    def level(self) -> str:
        return "statement" if self.statement_level else "operation"

    # -- public -------------------------------------------------------------------------
    async def explore(self, race: Race, *, schedules: ScheduleMaker | None = None) -> Exploration:
        """Run the race under schedules chosen among the actors that can move: the choice
        tree, fewest preemptions first, up to `sample` schedules, then `walks` PCT
        schedules if the tree was not exhausted (or random walks, or Hypothesis's draws,
        by mode); or under the forced schedules `schedules` makes. A walk's failure is
        shrunk by Hypothesis; a failure is stored and raised as RaceFailure with its
        transcript and rerun line; HarnessError when the race never happened.
        """
        __tracebackhide__ = True
        started = time.perf_counter()
        if self.forced_schedule is not None:
            exploration = await self._forced(race, [self.forced_schedule], mode="forced")
        elif schedules is not None:
            exploration = await self._given(race, schedules)
        else:
            exploration = await self._search(race)
        exploration.seconds = time.perf_counter() - started
        self.explorations.append(exploration)
        self._require_produced(race, exploration)
        return exploration

    async def run_schedules(self, race: Race, schedules: Sequence[Schedule]) -> Exploration:
        """Run these forced schedules only; impossible ones are counted, one must produce
        the race."""
        __tracebackhide__ = True
        exploration = await self._forced(race, schedules, mode="given")
        self._require_produced(race, exploration)
        return exploration

    async def run(self, race: Race, chooser: Chooser, *, check: bool = True) -> RaceOutcome:
        """One interleaving on a fresh database; raises RaceFailure if the check fails."""
        __tracebackhide__ = True
        control = await self._control_connection()
        with self.phases.timed("clone"):
            dsn = await self._fresh.take()
        try:
            return await self._run_on(dsn, race, chooser, control, check=check)
        finally:
            self._fresh.drop_later(dsn)  # once its backends exited, off the engine's path

    async def aclose(self) -> None:
        """Close the engine's control connection and drop its databases."""
        if self._control is not None:
            await self._control.close()
            self._control = None
            self._fresh.drop_later(self._control_dsn)
        await self._fresh.aclose()

    async def __aenter__(self) -> RaceEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _control_connection(self) -> psycopg.AsyncConnection:
        """The engine's own connection, in a database of its own (so it never delays the
        drop of an interleaving's database): the clock, lock waits, terminations."""
        if self._control is None:
            self._control_dsn = await self._fresh.take()
            self._control = await psycopg.AsyncConnection.connect(
                with_params(self._control_dsn, application_name="turnproof-control"),
                autocommit=True,
            )
        return self._control

    # -- exploration modes ----------------------------------------------------------------
    async def _forced(self, race: Race, schedules: Sequence[Schedule], *, mode: str) -> Exploration:
        __tracebackhide__ = True
        exploration = Exploration(race.name, self.level, mode)
        for schedule in schedules:
            problem = schedule_problem(schedule, race.actors, processes=race.processes)
            if problem:
                raise InvalidRace(
                    f"race {race.name!r}: schedule {format_schedule(schedule)!r}: {problem}"
                )
            try:
                outcome = await self.run(race, Forced(schedule))
            except InvalidInterleaving:
                if mode == "forced":
                    raise
                exploration.invalid += 1
                continue
            self._count(race, exploration, outcome)
        return exploration

    async def _given(self, race: Race, schedules: ScheduleMaker) -> Exploration:
        __tracebackhide__ = True
        probe = await self.run(race, Indexed(()))
        moves = {name: probe.schedule.count(Step(name)) for name in race.actors}
        exploration = await self._forced(race, schedules(moves), mode="given")
        self._count(race, exploration, probe)
        return exploration

    async def _search(self, race: Race) -> Exploration:
        __tracebackhide__ = True
        mode = "hypothesis" if self.mode == "hypothesis" else "exhaustive"
        exploration = Exploration(race.name, self.level, mode)
        hypothesis = HypothesisSearch(
            f"{self.identity}|{race.name}|{self.adapter.name}",
            self._attempt_counted(race, exploration),
        )
        stored = await hypothesis.replay_stored()
        if stored is not None:
            await self._raise_shrunk(race, stored, "replayed from Hypothesis's example database")
        if self.mode == "hypothesis":
            found = await hypothesis.search()
            if found is not None:
                await self._raise_shrunk(race, found, "found and shrunk by Hypothesis")
            return exploration
        cap = {"auto": self.sample, "exhaustive": None}.get(self.mode, 1)  # 1: a probe
        steps = await self._tree(race, exploration, hypothesis, cap)
        if exploration.exhausted or self.mode == "exhaustive":
            return exploration
        return await self._walks(race, exploration, hypothesis, steps)

    async def _tree(
        self, race: Race, exploration: Exploration, hypothesis: HypothesisSearch, cap: int | None
    ) -> dict[str, int]:
        """The choice tree, fewest deviations first, up to `cap` schedules; returns the
        most statements each actor sent in one of them."""
        __tracebackhide__ = True
        tree, steps = ChoiceTree(), {}
        while not tree.exhausted and (cap is None or tree.leaves < cap):
            outcome = await self._explore_one(
                race, exploration, tree.next_run(), hypothesis, fewest_deviations=True
            )
            tree.expand(outcome.decisions)
            steps = {a: max(n, steps.get(a, 0)) for a, n in outcome.steps.items()}
        exploration.exhausted, exploration.preemptions = tree.exhausted, tree.covered
        exploration.systematic = exploration.run
        return steps

    async def _walks(
        self,
        race: Race,
        exploration: Exploration,
        hypothesis: HypothesisSearch,
        steps: dict[str, int],
    ) -> Exploration:
        """PCT (or random) schedules: --race-walks of them, more until the race happened."""
        __tracebackhide__ = True
        rng = random.Random(self.seed)
        exploration.mode = "random" if self.mode == "random" else "pct"
        exploration.seed = self.seed
        statements = sum(steps.values())
        while (sampled := exploration.run - exploration.systematic) < self.walks or (
            self._missing(race, exploration) and sampled < self.walks * WALKS_UNTIL_PRODUCED
        ):
            chooser: Chooser = (
                RandomWalk(rng)
                if exploration.mode == "random"
                else PCT(rng, list(race.actors), self.pct_depth, statements)
            )
            await self._explore_one(race, exploration, chooser, hypothesis)
        if exploration.mode == "pct":
            exploration.bound = pct_bound(
                len(race.actors),
                statements,
                self.pct_depth,
                exploration.run - exploration.systematic,
            )
        return exploration

    async def _explore_one(
        self,
        race: Race,
        exploration: Exploration,
        chooser: Chooser,
        hypothesis: HypothesisSearch,
        *,
        fewest_deviations: bool = False,
    ) -> RaceOutcome:
        """Run one searched schedule; on failure, store it (shrunk by Hypothesis unless it
        has the `fewest_deviations` any failing schedule can have) and raise."""
        __tracebackhide__ = True
        outcome, failed = await self._attempt(race, chooser)
        if failed:
            how = f"found by {exploration.mode} search after {exploration.run} passing schedules"
            if not fewest_deviations:
                await self._raise_shrunk(race, outcome.indices, how, hypothesis)
            hypothesis.store(outcome.indices)
            how += (
                "; every schedule with fewer choices other than the non-preemptive one "
                "passed, so it is reported as found"
            )
            await self._raise_shrunk(race, outcome.indices, how)
        self._count(race, exploration, outcome)
        return outcome

    def _attempt_counted(
        self, race: Race, exploration: Exploration
    ) -> Callable[[tuple[int, ...]], Awaitable[bool]]:
        """One interleaving under choice indices, for Hypothesis: True when it failed."""

        async def attempt(indices: tuple[int, ...]) -> bool:
            outcome, failed = await self._attempt(race, Indexed(indices))
            if not failed:
                self._count(race, exploration, outcome)
            return failed

        return attempt

    async def _attempt(self, race: Race, chooser: Chooser) -> tuple[RaceOutcome, bool]:
        try:
            return await self.run(race, chooser), False
        except RaceFailure as failure:
            return failure.outcome, True

    async def _raise_shrunk(
        self,
        race: Race,
        indices: Sequence[int],
        how: str,
        hypothesis: HypothesisSearch | None = None,
    ) -> NoReturn:
        """Shrink (if given Hypothesis to), then fail with the shrunk schedule."""
        __tracebackhide__ = True
        if hypothesis is not None:
            shrunk = await hypothesis.shrink(indices)
            how += (
                f"; shrunk by Hypothesis from {_deviations(indices)} to {_deviations(shrunk)} "
                "choices other than the non-preemptive one"
            )
            indices = shrunk
        try:
            await self.run(race, Indexed(indices))
        except RaceFailure as failure:
            raise RaceFailure(f"{failure}\n({how})", failure.outcome) from None
        raise HarnessError(
            f"race {race.name!r}: the failing schedule {list(indices)} passed when replayed: "
            "the implementation or the engine is not deterministic under one schedule"
        )

    def _count(self, race: Race, exploration: Exploration, outcome: RaceOutcome) -> None:
        exploration.run += 1
        exploration.schedules.append(outcome.schedule)
        produced = [p.description for p in self._wanted(race) if p.happened(outcome)]
        exploration.produced += bool(produced)
        exploration.seen.update(produced)
        exploration.last = outcome

    def _missing(self, race: Race, exploration: Exploration) -> list[Produced]:
        return [p for p in self._wanted(race) if p.description not in exploration.seen]

    def _require_produced(self, race: Race, exploration: Exploration) -> None:
        missing = self._missing(race, exploration)
        if missing:
            raise HarnessError(
                f"race {race.name!r}: in {exploration.run} {self.level}-level interleavings "
                f"({exploration.invalid} impossible) this never happened: "
                + "; ".join(p.description for p in missing)
                + ". A race that did not happen proves nothing, so there is no verdict"
            )

    def _wanted(self, race: Race) -> list[Produced]:
        return [p for p in race.produced if self.statement_level or not p.statement_level_only]

    # -- one interleaving ---------------------------------------------------------------
    async def _run_on(
        self,
        dsn: str,
        race: Race,
        chooser: Chooser,
        control: psycopg.AsyncConnection,
        *,
        check: bool,
    ) -> RaceOutcome:
        __tracebackhide__ = True
        clock = DatabaseClock(control)  # clock_timestamp() is the server's, in any database
        history, transcript, context = History(), ["schedule: "], {}
        stores: dict[str, TurnStore] = {}
        actors: dict[str, Actor] = {}
        adapter = self._actors_adapter(race)
        proxies: dict[str, tuple[Proxy, StatementGate]] = {}
        try:
            with self.phases.timed("connect"):  # every connection at once: they are independent
                proxies.update(self._create_proxies(list(race.actors), dsn))
                await _concurrently(
                    [partial(self._open_store, stores, "setup", dsn)]
                    + ([partial(self._open_store, stores, "reader", dsn)] if check else [])
                    + [
                        partial(
                            self._open_actor,
                            actors,
                            adapter,
                            name,
                            ops,
                            dsn,
                            *proxies.get(name, (None, None)),
                            context,
                            history,
                            transcript,
                        )
                        for name, ops in race.actors.items()
                    ]
                )
            with self.phases.timed("setup"):
                context.update(await race.setup(stores["setup"], clock))
                await stores.pop("setup").aclose()
            ordered = [actors[name] for name in race.actors]
            monitor = BlockingMonitor(control, database_name(dsn))
            outcome = await self._interleave(
                race, chooser, ordered, context, history, transcript, monitor
            )
            outcome.finished_at = await clock.now()
            if check:
                with self.phases.timed("check"):
                    await self._check(race, outcome, stores["reader"])
            return outcome
        finally:
            with self.phases.timed("close"):
                self._open_gates([gate for _, gate in proxies.values()])
                await _concurrently(
                    [partial(_close_store, store) for store in stores.values()]
                    + [partial(_close_store, actor.store) for actor in actors.values()]
                )
                self._delete_proxies([proxy for proxy, _ in proxies.values()])

    async def _open_store(self, stores: dict[str, TurnStore], role: str, dsn: str) -> None:
        stores[role] = await self._connect(self.adapter, dsn, f"turnproof-{role}")

    async def _connect(self, adapter: Adapter, dsn: str, name: str) -> TurnStore:
        store = await adapter.connect(with_params(dsn, application_name=name))
        return self.store_wrapper(store) if self.store_wrapper is not None else store

    async def _interleave(
        self,
        race: Race,
        chooser: Chooser,
        actors: list[Actor],
        context: Context,
        history: History,
        transcript: list[str],
        monitor: BlockingMonitor,
    ) -> RaceOutcome:
        trace = Trace()
        gates = [actor.gate for actor in actors if actor.gate is not None]
        if self.proxies is not None and gates:
            self.proxies.call(lambda _: [gate.hold_steps() for gate in gates])
        try:
            with self.phases.timed("schedule"):
                await Scheduler(self.statement_level, self.step_timeout).perform(
                    chooser, actors, monitor, transcript, race.name, trace
                )
        finally:
            transcript[0] = f"schedule: {format_schedule(trace.entries) or '(none)'}"
        return RaceOutcome(
            race=race.name,
            schedule=tuple(trace.entries),
            context=context,
            history=history,
            statements={a.name: a.statements() for a in actors},
            waited={a.name for a in actors if a.was_blocked},
            transcript=transcript,
            capabilities=frozenset(self.adapter.capabilities),
            decisions=trace.decisions,
            indices=trace.indices(),
            shortest=trace.shortest(),
            steps={a.name: trace.statements(a.name) for a in actors},
            waits=[wait for a in actors for wait in a.waits],
            faults=[fault for a in actors for fault in a.faults],
        )

    async def _check(self, race: Race, outcome: RaceOutcome, reader: TurnStore) -> None:
        __tracebackhide__ = True
        outcome.reader = reader
        try:
            await race.check(outcome)
        except AssertionError as exc:
            rerun = f"\n{self.rerun(outcome.shortest)}" if self.rerun else ""
            lanes = "\n".join(render_lanes(timeline_of(outcome)))
            transcript = f"\n\ntranscript:\n{outcome.describe()}" if self.transcript else ""
            raise RaceFailure(
                f"{race.name}: {exc}\n\ntimeline (schedule: {format_schedule(outcome.schedule)}):"
                f"\n{lanes}{transcript}{rerun}",
                outcome,
            ) from None
        finally:
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

    def _create_proxies(self, names: list[str], dsn: str) -> dict[str, tuple[Proxy, StatementGate]]:
        """A proxy listener with its gate for each actor, made in one call on the proxy
        server's thread (one round trip per interleaving, not two per actor)."""
        if self.proxies is None:
            return {}
        upstream = _host_port(dsn)

        def create(registry: ProxyServer) -> dict[str, tuple[Proxy, StatementGate]]:
            made = {}
            for name in names:
                self._counter += 1
                proxy = registry.create_proxy(f"actor-{name}-{self._counter}", upstream)
                made[name] = (proxy, proxy.gate())  # before connecting: it sees them open
            return made

        return self.proxies.call(create)

    def _open_gates(self, gates: list[StatementGate]) -> None:
        """Let everything still held through before the actors close: a statement an actor
        sent after its operation returned (a driver's rollback of a failed transaction)
        stays held in step mode, and a client closing cleanly waits behind it."""
        if self.proxies is not None and gates:
            self.proxies.call(lambda _: [gate.open() for gate in gates])

    def _delete_proxies(self, proxies: list[Proxy]) -> None:
        if self.proxies is not None and proxies:
            self.proxies.call(lambda registry: [registry.delete_proxy(p.name) for p in proxies])

    async def _open_actor(
        self,
        actors: dict[str, Actor],
        adapter: Adapter,
        name: str,
        ops: list[Op],
        dsn: str,
        proxy: Proxy | None,
        gate: StatementGate | None,
        context: Context,
        history: History,
        transcript: list[str],
    ) -> None:
        actor_gate = None
        if proxy is not None and gate is not None:
            actor_gate = ActorGate(gate)
            dsn = with_params(dsn, host="127.0.0.1", port=str(proxy.port))
        store = await self._connect(adapter, dsn, application_name(name))
        actors[name] = Actor(
            name, ops, store, history, context, transcript, proxy=proxy, gate=actor_gate
        )


async def _close_store(store: TurnStore) -> None:
    with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
        await store.aclose()  # a cut connection may refuse a clean close


async def _concurrently(calls: list[Callable[[], Awaitable[object]]]) -> None:
    """Await every call at once; the first error is raised as itself, not in a group."""
    errors: list[BaseException] = []

    async def call(function: Callable[[], Awaitable[object]]) -> None:
        try:
            await function()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        for function in calls:
            group.start_soon(call, function)
    if errors:
        raise errors[0]


def _deviations(indices: Sequence[int]) -> int:
    return sum(1 for index in indices if index)


def _host_port(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"
