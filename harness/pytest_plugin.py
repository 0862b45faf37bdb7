"""The turnproof pytest plugin: options, the scenario fixtures, capability skips, the matrix.

Registered through the `pytest11` entry point, so `pytest --pyargs scenarios`
works from any directory. It stays inert in runs that collect no scenario:
nothing is imported from the adapter and no server starts until a fixture
asks for one.

Public fixtures: `adapter`, `turn_dsn`, `store`, `open_store` (also in a process of its own,
to kill), `db_clock`, and `faulty_store`, `restart_postgres` and `race_engine` from the
sub-plugins harness.network_faults, harness.server_restart and harness.race.pytest_plugin.
Markers: `requirement(*ids)`, `capability(*names)`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.adapter_loading import DEFAULT_ADAPTER, AdapterLoadError, assert_store, load_adapter
from harness.conformance_report import (
    ERROR,
    FAIL,
    PASS,
    SKIP,
    ConformanceReport,
    ScenarioOutcome,
    build_report,
)
from harness.contract import Adapter, Clock, TurnStore
from harness.db_clock import DatabaseClock
from harness.driver.client import DriverAdapter
from harness.errors import HarnessError
from harness.postgres.databases import DatabaseFactory, with_params
from harness.postgres.resolver import PG_MODES, PostgresServer, start_postgres
from harness.proxy.server import RunningProxyServer
from harness.requirements import REQUIREMENTS

USAGE_ERROR = 2

# option name -> (ini key, environment variable, help)
_SETTINGS = {
    "adapter": (
        "turnproof_adapter",
        "TURNPROOF_ADAPTER",
        "implementation under test: 'package.module:attribute' or a name registered in the "
        f"'turnproof.adapters' entry-point group (default: {DEFAULT_ADAPTER})",
    ),
    "adapter_cmd": (
        "turnproof_adapter_cmd",
        "TURNPROOF_ADAPTER_CMD",
        "run the implementation as this driver command (JSON-lines driver protocol, "
        "docs/driver-protocol.md), e.g. 'node driver.js' or 'python -m harness.worker "
        "--adapter SPEC'; takes precedence over --adapter",
    ),
    "pg_dsn": (
        "turnproof_pg_dsn",
        "TURNPROOF_PG_DSN",
        "use this PostgreSQL server (needs CREATEDB); databases are created and dropped per test",
    ),
    "pg": (
        "turnproof_pg",
        "TURNPROOF_PG",
        f"where PostgreSQL comes from: {', '.join(PG_MODES)} (default auto: DSN if given, "
        "else Docker if its daemon answers, else the embedded server)",
    ),
}


@dataclass
class TurnproofRun:
    """Everything one pytest session knows about the conformance run."""

    adapter_spec: str
    pg_mode: str
    pg_dsn: str | None
    json_path: Path | None
    adapter_cmd: str | None = None
    _adapter: Adapter | None = None
    _process_adapter: DriverAdapter | None = None
    _server: PostgresServer | None = None
    _factory: DatabaseFactory | None = None
    _proxies: RunningProxyServer | None = None
    outcomes: dict[str, ScenarioOutcome] = field(default_factory=dict)
    requirement_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deselected: bool = False
    report: ConformanceReport | None = None
    log: Callable[[str], None] = print

    def adapter(self) -> Adapter:
        if self._adapter is None:
            if self.adapter_cmd:
                self._adapter = self._process_adapter = DriverAdapter.from_command_line(
                    self.adapter_cmd
                )
            else:
                self._adapter = load_adapter(self.adapter_spec)
        return self._adapter

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

    def databases(self) -> DatabaseFactory:
        """Start (or reach) PostgreSQL and install the adapter's schema into a template, once."""
        if self._factory is None:
            self._server = start_postgres(self.pg_mode, self.pg_dsn, log=self.log)
            self._factory = DatabaseFactory(self._server.admin_dsn)
            self._factory.prepare_template(self.adapter().install, probe=self._probe_store)
        return self._factory

    async def _probe_store(self, dsn: str) -> None:
        """Connect once before any scenario, so a missing operation is one clear error."""
        adapter = self.adapter()
        store = await adapter.connect(dsn)
        try:
            assert_store(store, adapter.name)
        finally:
            await store.aclose()

    def complete(self, session: pytest.Session) -> bool:
        """Every scenario module was collected and nothing deselected: a conformance run,
        judged strictly, rather than a developer's selection."""
        import scenarios

        every = {p.resolve() for p in Path(scenarios.__file__).parent.glob("test_*.py")}
        collected = {Path(str(item.path)).resolve() for item in session.items}
        return not self.deselected and every <= collected

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

    def close(self) -> None:
        """Drop our databases and stop what we started; safe to call more than once."""
        try:
            if self._process_adapter is not None:
                self._process_adapter.close()
            if self._proxies is not None:
                self._proxies.stop()
                self._proxies = None
            if self._factory is not None:
                self._factory.close()
        finally:
            self._factory = None
            if self._server is not None:
                self._server.stop()
                self._server = None


_RUN = pytest.StashKey[TurnproofRun]()

pytest_plugins = ["harness.network_faults", "harness.server_restart", "harness.race.pytest_plugin"]


def turnproof_run(config: pytest.Config) -> TurnproofRun:
    """The session's run: its adapter, PostgreSQL, proxies (for the harness's sub-plugins)."""
    return config.stash[_RUN]


def conformance_report(config: pytest.Config) -> ConformanceReport | None:
    """The finished run's matrix and verdict, once the session has ended (None before)."""
    run = config.stash.get(_RUN, None)
    return run.report if run is not None else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("turnproof", "turnproof conformance harness")
    for name, (ini, env, help_text) in _SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        group.addoption(flag, dest=f"turnproof_{name}", default=None, help=f"{help_text} [{env}]")
        parser.addini(ini, help=help_text, default=None)
    group.addoption(
        "--requirement",
        dest="turnproof_requirements",
        action="append",
        default=[],
        metavar="ID",
        help="run only the scenarios tagged with this requirement ID (repeatable, or "
        "comma-separated: --requirement MSG-4,RUN-1)",
    )
    group.addoption(
        "--turnproof-json",
        dest="turnproof_json",
        default=None,
        metavar="PATH",
        help="write the requirement matrix and verdict as JSON to PATH",
    )


def _setting(config: pytest.Config, name: str) -> str | None:
    ini, env, _ = _SETTINGS[name]
    return (
        config.getoption(f"turnproof_{name}") or os.environ.get(env) or config.getini(ini) or None
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requirement(*ids): the contract requirement IDs a scenario checks"
    )
    config.addinivalue_line(
        "markers", "capability(*names): capabilities a scenario needs beyond its requirements'"
    )
    spec = _setting(config, "adapter")
    json_path = config.getoption("turnproof_json")
    run = TurnproofRun(
        adapter_spec=spec or DEFAULT_ADAPTER,
        pg_mode=_setting(config, "pg") or "auto",
        pg_dsn=_setting(config, "pg_dsn"),
        json_path=Path(json_path) if json_path else None,
        adapter_cmd=_setting(config, "adapter_cmd"),
        log=lambda line: _write_line(config, line),
    )
    if run.pg_mode not in PG_MODES:
        pytest.exit(f"turnproof: --pg {run.pg_mode!r}: choose one of {', '.join(PG_MODES)}", 2)
    if spec or run.adapter_cmd:  # an explicit choice is checked now: a typo costs no server
        try:
            run.adapter()
        except AdapterLoadError as exc:
            pytest.exit(f"turnproof: {exc}", USAGE_ERROR)
    config.stash[_RUN] = run


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is not None:
        run.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash[_RUN]
    _select_requirements(config, items)
    for item in items:
        ids = tuple(i for mark in item.iter_markers("requirement") for i in mark.args)
        if not ids:
            continue
        unknown = [i for i in ids if i not in REQUIREMENTS]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: unknown requirement ID(s) {unknown}; see harness/requirements.py"
            )
        run.requirement_ids[item.nodeid] = ids
        item.user_properties.append(("requirements", " ".join(ids)))
        needed = {REQUIREMENTS[i].capability for i in ids}
        needed |= {c for mark in item.iter_markers("capability") for c in mark.args}
        try:
            declared = run.adapter().capabilities
        except AdapterLoadError as exc:
            raise pytest.UsageError(f"turnproof: {exc}") from None
        lacking = sorted(needed - declared)
        if lacking:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"adapter {run.adapter().name!r} lacks capability "
                    f"{', '.join(repr(c) for c in lacking)}"
                )
            )


def _select_requirements(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = {i.strip() for v in config.getoption("turnproof_requirements") for i in v.split(",")}
    if not wanted:
        return
    unknown = sorted(wanted - set(REQUIREMENTS))
    if unknown:
        raise pytest.UsageError(
            f"--requirement: unknown ID(s) {unknown}; known: {', '.join(REQUIREMENTS)}"
        )
    keep, drop = [], []
    for item in items:
        ids = {i for mark in item.iter_markers("requirement") for i in mark.args}
        (keep if ids & wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        items[0].config.stash[_RUN].deselected = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:  # type: ignore[misc]
    report: pytest.TestReport = yield
    run = item.config.stash[_RUN]
    ids = run.requirement_ids.get(item.nodeid)
    if ids is None:
        return report
    previous = run.outcomes.get(item.nodeid)
    outcome = _classify(report, call)
    if outcome is not None and (previous is None or previous.outcome == PASS):
        reason = ""
        if outcome == SKIP and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        run.outcomes[item.nodeid] = ScenarioOutcome(scenario_id(item), ids, outcome, reason)
    return report


def scenario_id(item: pytest.Item) -> str:
    """`package.module::test[param]`: the same from any directory, and usable with --pyargs."""
    module = getattr(item, "module", None)
    return f"{module.__name__}::{item.name}" if module is not None else item.nodeid


def _classify(report: pytest.TestReport, call: pytest.CallInfo[None]) -> str | None:
    if report.skipped:
        return SKIP
    if report.failed:
        if call.excinfo is not None and call.excinfo.errisinstance(HarnessError):
            return ERROR
        return FAIL if report.when == "call" else ERROR
    return PASS if report.when == "call" else None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is None or not run.outcomes:
        return
    adapter = run.adapter()
    run.report = build_report(
        run.outcomes.values(),
        adapter_name=adapter.name,
        adapter_spec=run.adapter_cmd or run.adapter_spec,
        capabilities=adapter.capabilities,
        postgres=run.postgres_description,
        complete_run=run.complete(session),
    )
    factory = run._factory
    if factory is not None and factory.median_clone_ms() is not None:
        run.report.postgres += f"; median database clone {factory.median_clone_ms():.1f} ms"
    if run.json_path is not None:
        run.report.write_json(run.json_path)
    if not run.report.verdict.ok and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash.get(_RUN, None)
    if run is None or run.report is None:
        return
    terminalreporter.section("turnproof requirement matrix")
    for line in run.report.render():
        terminalreporter.write_line(line)


# Fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def adapter(pytestconfig: pytest.Config) -> Adapter:
    """The implementation under test, as chosen by --adapter."""
    return pytestconfig.stash[_RUN].adapter()


@pytest.fixture(scope="session")
def _turnproof_databases(pytestconfig: pytest.Config) -> DatabaseFactory:
    try:
        return pytestconfig.stash[_RUN].databases()
    except (AdapterLoadError, HarnessError) as exc:
        pytest.exit(f"turnproof: {exc}", USAGE_ERROR)


@pytest.fixture
def turn_dsn(_turnproof_databases: DatabaseFactory) -> Iterator[str]:
    """A fresh database with the adapter's schema; dropped after the test."""
    dsn = _turnproof_databases.create()
    yield dsn
    _turnproof_databases.drop(dsn)


@pytest.fixture
async def open_store(
    request: pytest.FixtureRequest, adapter: Adapter, turn_dsn: str
) -> AsyncIterator[Callable[..., Awaitable[TurnStore]]]:
    """More replicas on the test's database: `await open_store(clock=..., name=...)`.

    `own_process=True` gives a replica in a process of its own (a `DriverStore`), which
    `await replica.kill()` SIGKILLs like a crash; the scenario needs the `process`
    capability.
    """
    opened: list[TurnStore] = []

    async def open_(
        *, clock: Clock | None = None, name: str = "replica", own_process: bool = False
    ) -> TurnStore:
        dsn = with_params(turn_dsn, application_name=f"turnproof-{name}")
        chosen = request.config.stash[_RUN].process_adapter() if own_process else adapter
        store = assert_store(await chosen.connect(dsn, clock=clock), adapter.name)
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
async def store(open_store: Callable[..., Awaitable[TurnStore]]) -> TurnStore:
    """One replica connected to the test's database."""
    return await open_store(name="scenario")


@pytest.fixture
async def db_clock(turn_dsn: str) -> AsyncIterator[DatabaseClock]:
    """The database's clock, for waiting on staleness and proving timing premises."""
    clock = await DatabaseClock.connect(with_params(turn_dsn, application_name="turnproof-clock"))
    yield clock
    await clock.aclose()


def _write_line(config: pytest.Config, line: str) -> None:
    """Progress for the user now, even from inside a fixture whose output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line)
