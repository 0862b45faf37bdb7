"""The race engine's part of the pytest plugin: its options and the `race_engine` fixture.

A sub-plugin of harness.pytest_plugin, registered through its `pytest_plugins`, so the
race engine's settings live next to the engine.
"""

from __future__ import annotations

import pytest

from harness.contract import Adapter
from harness.pytest_plugin import scenario_id, turnproof_run
from harness.race.engine import RaceEngine


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("turnproof", "turnproof conformance harness")
    group.addoption(
        "--race-schedule",
        dest="race_schedule",
        default=None,
        metavar="A,B,...",
        help="run race scenarios under this one schedule only (the rerun line of a failure "
        "prints it): actor names, one per step, or cut:NAME / terminate:NAME",
    )
    group.addoption(
        "--race-sample",
        dest="race_sample",
        type=int,
        default=200,
        metavar="N",
        help="explore every interleaving up to N of them, else a seeded sample of N (default 200)",
    )
    group.addoption(
        "--race-seed",
        dest="race_seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the sampled interleavings (printed in each failure's rerun line)",
    )


@pytest.fixture
def race_engine(request: pytest.FixtureRequest, adapter: Adapter) -> RaceEngine:
    """Forces interleavings of actors' operations: `await race_engine.explore(race)`.

    Statement level through the harness's proxies when the adapter declares
    `network`, operation level otherwise.
    """
    run = turnproof_run(request.config)
    factory = request.getfixturevalue("_turnproof_databases")
    schedule = request.config.getoption("race_schedule")
    seed = request.config.getoption("race_seed")
    item = request.node

    def rerun(failed: tuple[str, ...]) -> str:
        target = scenario_id(item)
        return (
            f"rerun: pytest -p no:cacheprovider --pyargs '{target}' {run.adapter_option} "
            f"--race-schedule '{','.join(failed)}'"
        )

    return RaceEngine(
        adapter,
        factory,
        run.proxies() if "network" in adapter.capabilities else None,
        process_adapter=run.process_adapter,
        forced_schedule=tuple(schedule.split(",")) if schedule else None,
        sample=request.config.getoption("race_sample"),
        seed=seed,
        rerun=rerun,
    )
