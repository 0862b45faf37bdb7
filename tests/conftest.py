"""Fixtures of the harness's own tests: one PostgreSQL server for the whole session.

Inner pytest runs (pytester) reach it with --pg-dsn, so each of them does not
boot a server of its own.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import scenarios
from harness.adapter_loading import load_adapter
from harness.postgres.databases import DatabaseFactory
from harness.postgres.resolver import PostgresServer, start_postgres

pytest_plugins = ["pytester"]

HEAVY = (
    "test_main_job_passes_every_covered_requirement",
    "test_the_sqlalchemy_orm_example_is_a_conforming_implementation",
    "test_core_suite_passes_through_the_node_driver",
    "test_sequential_core_scenarios_pass_through_the_python_worker",
)
"""The tests that run a whole suite, minutes each where most take seconds, in the order
they are dealt to the workers: with 3, the first worker gets the two shortest."""


def pytest_configure(config: pytest.Config) -> None:
    """Where the environment forbids bytecode files (PYTHONDONTWRITEBYTECODE), the
    processes these tests start (xdist workers, `turnproof run`, pytest, driver workers:
    about a hundred) would each compile and assertion-rewrite the same two hundred modules
    from source, half of the run's CPU; they share a bytecode cache in a directory of
    this session instead, removed at its end, and nothing is written beside the sources.

    Then import the scenario modules once, assertions rewritten, for every inner run of
    this process: pytester keeps the modules imported before a run, and would otherwise
    import and rewrite all of them again for each of the hundreds of inner runs.

    A run started in the background by a script (`pytest &`) inherits SIGINT ignored, and
    so would the runs whose Ctrl-C some tests check: they get the default handling back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not hasattr(config, "workerinput"):
        cache = tempfile.mkdtemp(prefix="turnproof-tests-bytecode-")
        environment = pytest.MonkeyPatch()
        environment.delenv("PYTHONDONTWRITEBYTECODE")
        environment.setenv("PYTHONPYCACHEPREFIX", cache)
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
        config.add_cleanup(environment.undo)
    for module in pkgutil.iter_modules(scenarios.__path__):
        importlib.import_module(f"scenarios.{module.name}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start each worker's share of the tests with its HEAVY ones, dealt round
    the workers. Work stealing splits the collection into one contiguous share per worker
    and steals from a share's end, so a heavy test late in a share, or two in one, would
    finish the run minutes after the other workers ran out of tests."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers:
        return
    heavy = sorted((i for i in items if i.name in HEAVY), key=lambda i: HEAVY.index(i.name))
    light = [i for i in items if i.name not in HEAVY]
    shares: list[list[pytest.Item]] = [heavy[k::workers] for k in range(workers)]
    left = len(items)
    for k, share in enumerate(shares):  # xdist's even split: pending // workers left
        size = left // (workers - k)
        left -= size
        fill = max(0, size - len(share))
        share += light[:fill]
        del light[:fill]
    items[:] = [item for share in shares for item in share] + light


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres(
        os.environ.get("TURNPROOF_PG", "auto"), os.environ.get("TURNPROOF_PG_DSN")
    )
    yield server
    server.stop()


@dataclass
class SuiteRun:
    """An inner conformance run: pytest's result plus the matrix it wrote."""

    result: pytest.RunResult
    report: dict[str, Any] | None

    def status(self, requirement_id: str) -> str:
        assert self.report is not None, "the run wrote no report:\n" + self.result.stdout.str()
        rows = {row["id"]: row for row in self.report["rows"]}
        return rows[requirement_id]["status"]

    def failing(self) -> set[str]:
        """The scenarios (`test_name[param]`) that failed or errored, from the matrix."""
        assert self.report is not None, "the run wrote no report:\n" + self.result.stdout.str()
        rows = self.report["rows"]
        return {nodeid.split("::", 1)[1] for row in rows for nodeid in row["failing"]}

    def errors(self) -> int:
        """Scenarios without a verdict (a premise failed, the race did not happen)."""
        assert self.report is not None, "the run wrote no report:\n" + self.result.stdout.str()
        return sum(row["errors"] for row in self.report["rows"])


@pytest.fixture
def run_scenarios(pytester: pytest.Pytester, postgres_server: PostgresServer):
    """Run (a selection of) the shipped scenarios in-process against an adapter.

    Failures are shown as Python prints them (`--tb=native`; `args` can ask for another
    style): these tests judge outcomes, and pytest's own style parses the source file of
    every frame of every failure, a sixth of the CPU of a run of the broken variants."""

    def run(adapter: str, *args: str, target: str = "scenarios") -> SuiteRun:
        report_path = pytester.path / "report.json"
        result = pytester.runpytest_inprocess(
            "--pyargs",
            target,
            "-p",
            "no:cacheprovider",
            "--tb=native",
            "--adapter",
            adapter,
            "--pg-dsn",
            postgres_server.admin_dsn,
            "--turnproof-json",
            str(report_path),
            *args,
        )
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return SuiteRun(result, report)

    return run


@pytest.fixture(scope="module")
def databases(postgres_server: PostgresServer) -> Iterator[DatabaseFactory]:
    """Fresh databases with the reference's schema, for tests that work below the plugin."""
    factory = DatabaseFactory(postgres_server.admin_dsn)
    factory.prepare_template(load_adapter("reference").install)
    yield factory
    factory.close()
