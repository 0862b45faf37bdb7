"""The race engine's part of the pytest plugin: its options, the `race_engine` fixture, and
the per-race figures at the end of the run.

A sub-plugin of harness.pytest_plugin, registered through its `pytest_plugins`, so the
race engine's settings live next to the engine. Each exploration's figures travel as a
`race` user property of the test's report, so they reach the summary under pytest-xdist
too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness.contract import Adapter, TurnStore
from harness.pytest_plugin import scenario_id, turnproof_run
from harness.race.engine import DEFAULT_SAMPLE, DEFAULT_WALKS, MODES, RaceEngine
from harness.race.schedule import Schedule, format_schedule, parse_schedule


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("turnproof", "turnproof conformance harness")
    group.addoption(
        "--race-schedule",
        dest="race_schedule",
        default=None,
        metavar="A,B,...",
        help="run race scenarios under this one schedule (the rerun line of a failure prints "
        "it): actor names, one per step, or cut:NAME / terminate:NAME / kill:NAME / "
        "kill-after-send:NAME; after its end every step is the non-preemptive choice",
    )
    group.addoption(
        "--race-mode",
        dest="race_mode",
        default="auto",
        choices=MODES,
        help="how schedules are chosen: auto (the choice tree, fewest preemptions first, up "
        "to --race-sample schedules, then --race-walks PCT runs if it was not exhausted), "
        "exhaustive (the whole tree, no cap), pct, random, hypothesis (Hypothesis draws "
        "them; its profile's max_examples)",
    )
    group.addoption(
        "--race-sample",
        dest="race_sample",
        type=int,
        default=DEFAULT_SAMPLE,
        metavar="N",
        help="run up to N schedules of the choice tree, fewest preemptions first "
        f"(default {DEFAULT_SAMPLE})",
    )
    group.addoption(
        "--race-walks",
        dest="race_walks",
        type=int,
        default=DEFAULT_WALKS,
        metavar="N",
        help="then this many PCT (or random) schedules, more until the race was produced "
        f"(default {DEFAULT_WALKS})",
    )
    group.addoption(
        "--race-seed",
        dest="race_seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the PCT and random schedules (default 0)",
    )
    group.addoption(
        "--race-pct-depth",
        dest="race_pct_depth",
        type=int,
        default=2,
        metavar="D",
        help="PCT's bug depth: the number of ordering constraints a bug needs (default 2)",
    )


@pytest.fixture
async def race_engine(
    request: pytest.FixtureRequest, adapter: Adapter
) -> AsyncIterator[RaceEngine]:
    """Forces interleavings of actors' operations: `await race_engine.explore(race)`.

    Statement level through the harness's proxies when the adapter declares
    `network`, operation level otherwise.
    """
    config = request.config
    run = turnproof_run(config)
    factory = request.getfixturevalue("_turnproof_databases")
    schedule = config.getoption("race_schedule")
    item = request.node

    def rerun(failed: Schedule) -> str:
        forced = f" --race-schedule '{format_schedule(failed)}'" if failed else ""
        return (
            f"rerun: pytest -p no:cacheprovider --pyargs '{scenario_id(item)}' "
            f"{run.adapter_option}{forced}"
        )

    def wrap(store: TurnStore) -> TurnStore:
        return run.wrap_store(store, item)

    engine = RaceEngine(
        adapter,
        factory,
        run.proxies() if "network" in adapter.capabilities else None,
        process_adapter=run.process_adapter,
        forced_schedule=parse_schedule(schedule) if schedule else None,
        mode=config.getoption("race_mode"),
        sample=config.getoption("race_sample"),
        walks=config.getoption("race_walks"),
        seed=config.getoption("race_seed"),
        pct_depth=config.getoption("race_pct_depth"),
        rerun=rerun,
        store_wrapper=wrap,
        identity=scenario_id(item),
        transcript=config.option.verbose > 0,
    )
    async with engine:
        yield engine
    for exploration in engine.explorations:
        item.user_properties.append(("race", exploration.summary()))


class RaceFigures:
    """Collects each exploration's figures from the reports and prints them at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            test = report.nodeid.rpartition("::")[2]
            self.lines += [f"{test}: {v}" for k, v in report.user_properties if k == "race"]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.lines:
            terminalreporter.section("race explorations")
            for line in self.lines:
                terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RaceFigures(), "turnproof-race-figures")
