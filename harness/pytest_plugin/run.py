"""The run state: one object per pytest session, registered as a plugin under RUN_PLUGIN_NAME.

It owns what the run starts (PostgreSQL, the proxy server, driver processes) and hands it
out through public accessors, so the sub-plugins (network faults, server restart, the race
engine) and users' own fixtures reach the run the same way: `turnproof_run(config)`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.adapter_loading import assert_store, load_adapter
from harness.capability_guard import guard_store
from harness.conformance_report import ConformanceReport, ScenarioOutcome
from harness.contract import Adapter, TurnStore
from harness.driver.client import DriverAdapter
from harness.errors import TurnproofError, UsageError
from harness.postgres.databases import DatabaseFactory
from harness.postgres.fresh_databases import FreshDatabases
from harness.postgres.resolver import PostgresServer, start_postgres
from harness.proxy.server import RunningProxyServer
from harness.pytest_plugin.time_bounds import BoundedAdapter
from harness.requirements import CLAUSE_LETTERS, CLAUSES, capabilities_needed

RUN_PLUGIN_NAME = "turnproof-run"
USAGE_ERROR = 2
WORKER_OUTPUT_KEY = "turnproof"
"""Key of a worker's `worker_summary()` in pytest-xdist's `workeroutput`."""


@dataclass
class TurnproofRun:
    """Everything one pytest session knows about the conformance run."""

    adapter_spec: str
    pg_mode: str
    pg_dsn: str | None
    json_path: Path | None
    adapter_cmd: str | None = None
    operation_timeout: float = 30.0
    log: Callable[[str], None] = print
    outcomes: dict[str, ScenarioOutcome] = field(default_factory=dict)
    selected: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Scenario id -> requirement IDs of every scenario selected in this process."""
    deselected_scenarios: int = 0
    complete_run: bool = False
    interrupted: bool = False
    usage_error: str | None = None
    """A usage error that ended the run: no verdict, exit 2."""
    usage_error_shown: bool = False
    """pytest.exit() already printed it (a worker's or a scenario's has to be printed)."""
    report: ConformanceReport | None = None
    _adapter: Adapter | None = None
    _process_adapter: DriverAdapter | None = None
    _server: PostgresServer | None = None
    _factory: DatabaseFactory | None = None
    _fresh: FreshDatabases | None = None
    _proxies: RunningProxyServer | None = None

    def adapter(self) -> Adapter:
        """The implementation under test; a Python adapter is time-bounded (time_bounds)."""
        if self._adapter is None:
            if self.adapter_cmd:
                self._adapter = self._process_adapter = DriverAdapter.from_command_line(
                    self.adapter_cmd
                )
            else:
                self._adapter = BoundedAdapter(  # type: ignore[assignment]
                    load_adapter(self.adapter_spec), self.operation_timeout
                )
        return self._adapter  # type: ignore[return-value]

    def process_adapter(self) -> Adapter:
        """The implementation with every store in a process of its own, for the scenarios
        that kill writers: the driver itself, or a Python adapter behind the worker."""
        self.adapter()
        if self._process_adapter is None:
            self._process_adapter = DriverAdapter.python_worker(self.adapter_spec)
        return self._process_adapter

    @property
    def adapter_option(self) -> str:
        """How this run chose its adapter, as a command-line option (for rerun lines)."""
        if self.adapter_cmd:
            return f"--adapter-cmd {shlex.quote(self.adapter_cmd)}"
        return f"--adapter {shlex.quote(self.adapter_spec)}"

    def wrap_store(self, store: TurnStore, item: pytest.Item) -> TurnStore:
        """`store` as `item` may use it: only the operations of the capabilities it needs.

        A test tagged with no requirement judges nothing, so it gets the store unguarded.
        """
        if not requirement_ids(item):
            return store
        return guard_store(store, allowed=needed_capabilities(item), scenario=scenario_id(item))

    def databases(self) -> DatabaseFactory:
        """Start (or reach) PostgreSQL and install the adapter's schema into a template, once.

        The pre-flight (harness.pytest_plugin.preflight) calls it before the first
        scenario, so its failures are the user's set-up, reported before any verdict.
        """
        if self._factory is None:
            self._server = start_postgres(self.pg_mode, self.pg_dsn, log=self.log)
            self._factory = DatabaseFactory(self._server.admin_dsn)
            self._factory.prepare_template(self.adapter().install, probe=self._probe_store)
        return self._factory

    def fresh_databases(self) -> FreshDatabases:
        """The scenarios' databases, each cloned while the scenario before it runs."""
        if self._fresh is None:
            self._fresh = FreshDatabases(self.databases())
        return self._fresh

    async def _probe_store(self, dsn: str) -> None:
        """Connect once and close before any scenario: a missing operation, a connect() or
        aclose() that raises or hangs, is one clear error instead of one per scenario."""
        adapter = self.adapter()
        try:
            store = await adapter.connect(dsn)
        except TurnproofError:
            raise
        except Exception as exc:
            raise UsageError(
                f"adapter {adapter.name!r}: connect() to a freshly installed database raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        assert_store(store, adapter.name)
        try:
            await store.aclose()
        except TurnproofError:
            raise
        except Exception as exc:
            raise UsageError(
                f"adapter {adapter.name!r}: aclose() of a fresh store raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def proxies(self) -> RunningProxyServer:
        """The harness's own proxy server (race gates, faults), started on first use."""
        if self._proxies is None:
            self._proxies = RunningProxyServer.start()
        return self._proxies

    @property
    def postgres_description(self) -> str:
        return self._server.description if self._server else "not started"

    @property
    def server(self) -> PostgresServer | None:
        """The run's PostgreSQL, once `databases()` has started (or reached) it."""
        return self._server

    def worker_summary(self) -> dict[str, object]:
        """What an xdist worker tells the controller at its end (JSON-serialisable)."""
        return {
            "selected": {k: list(v) for k, v in self.selected.items()},
            "complete_run": self.complete_run,
            "usage_error": self.usage_error,
            "postgres": self.postgres_description,
            "median_clone_ms": self.median_clone_ms(),
        }

    def median_clone_ms(self) -> float | None:
        """Median time to clone a scenario's database, once some were cloned."""
        return self._factory.median_clone_ms() if self._factory is not None else None

    def close(self) -> None:
        """Drop our databases and stop what we started; safe to call more than once."""
        try:
            if self._process_adapter is not None:
                self._process_adapter.close()
            if self._proxies is not None:
                self._proxies.stop()
                self._proxies = None
            if self._fresh is not None:
                self._fresh.close()
                self._fresh = None
            if self._factory is not None:
                self._factory.close()
        finally:
            self._factory = None
            if self._server is not None:
                self._server.stop()
                self._server = None


def turnproof_run(config: pytest.Config) -> TurnproofRun:
    """The session's run: its adapter, PostgreSQL, proxies (for the harness's sub-plugins)."""
    run = config.pluginmanager.get_plugin(RUN_PLUGIN_NAME)
    if not isinstance(run, TurnproofRun):
        raise LookupError("the turnproof plugin is not configured in this pytest session")
    return run


def conformance_report(config: pytest.Config) -> ConformanceReport | None:
    """The finished run's matrix and verdict, once the session has ended (None before)."""
    run = config.pluginmanager.get_plugin(RUN_PLUGIN_NAME)
    return run.report if isinstance(run, TurnproofRun) else None


def scenario_id(item: pytest.Item) -> str:
    """`package.module::test[param]`: the same from any directory, and usable with --pyargs."""
    module = getattr(item, "module", None)
    return f"{module.__name__}::{item.name}" if module is not None else item.nodeid


def requirement_tags(item: pytest.Item) -> tuple[str, ...]:
    """What a scenario's `requirement` markers name: clause IDs (`MSG-1d`); the hooks refuse
    anything else (a bare requirement ID, an unknown clause) at collection."""
    return tuple(i for mark in item.iter_markers("requirement") for i in mark.args)


def requirement_ids(item: pytest.Item) -> tuple[str, ...]:
    """The requirement IDs a scenario checks (none: not a conformance scenario)."""
    return tuple(dict.fromkeys(i.rstrip(CLAUSE_LETTERS) for i in requirement_tags(item)))


def clause_tags(item: pytest.Item) -> tuple[str, ...]:
    """The clause IDs a scenario checks (`MSG-1d`), in marker order."""
    return tuple(i for i in requirement_tags(item) if i in CLAUSES)


_FIXTURE_CHANNELS = (
    ("race_engine", "race"),
    ("restart_postgres", "restart"),
    ("faulty_store", "network"),
)
"""Fixtures that say how a scenario reaches a bug, the first one found deciding."""


def scenario_channel(item: pytest.Item) -> str:
    """How a scenario reaches a bug (reference_impl.broken_variant.Channel): a `channel`
    marker, else derived from what it uses: the race engine, a server restart, a faulty
    link, a writer in its own process (`process`, to kill it), a skewed replica clock;
    else sequential. Broken variants declare the channel through which they are caught."""
    marker = item.get_closest_marker("channel")
    if marker is not None:
        return str(marker.args[0])
    fixtures = set(getattr(item, "fixturenames", ()))
    for fixture, channel in _FIXTURE_CHANNELS:
        if fixture in fixtures:
            return channel
    if "process" in needed_capabilities(item):
        return "kill"
    code = getattr(getattr(item, "function", None), "__code__", None)
    if code is not None and "skewed_clock" in code.co_names:
        return "skew"
    return "sequential"


def needed_capabilities(item: pytest.Item) -> frozenset[str]:
    """Its requirements' capabilities plus its `capability` markers: what it needs and may use."""
    markers = tuple(c for mark in item.iter_markers("capability") for c in mark.args)
    return capabilities_needed(requirement_ids(item), markers)


def is_xdist_worker(config: pytest.Config) -> bool:
    """This process is a pytest-xdist worker: it runs tests, the controller reports."""
    return hasattr(config, "workerinput")
