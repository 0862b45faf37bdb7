"""The session's hooks: configure the run, select and skip scenarios, run the pre-flight.

Every usage error ends the run here, as one line and exit 2, before any scenario runs.
Under pytest-xdist each worker selects and prepares for itself (its own PostgreSQL); a
worker's usage error travels to the controller in `workeroutput` (verdicts.py reports it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import pytest

from harness.adapter_loading import DEFAULT_ADAPTER
from harness.errors import UsageError
from harness.pytest_plugin import options, preflight
from harness.pytest_plugin.run import (
    RUN_PLUGIN_NAME,
    USAGE_ERROR,
    WORKER_OUTPUT_KEY,
    TurnproofRun,
    is_xdist_worker,
    needed_capabilities,
    requirement_ids,
    requirement_tags,
    scenario_id,
    turnproof_run,
)
from harness.pytest_plugin.shards import (
    SHARDED_OUT,
    SHARDS_PLUGIN_NAME,
    ShardSelection,
    shard_selection,
)
from harness.pytest_plugin.verdicts import VERDICTS_PLUGIN_NAME, Verdicts
from harness.requirements import CLAUSES, REQUIREMENTS


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requirement(*ids): the contract clause IDs (e.g. MSG-1d) a scenario checks"
    )
    config.addinivalue_line(
        "markers",
        "channel(name): how a scenario reaches a bug, where its fixtures cannot tell "
        "(sequential, race, kill, restart, network, skew)",
    )
    config.addinivalue_line(
        "markers", "capability(*names): capabilities a scenario needs beyond its requirements'"
    )
    try:
        run = _configured_run(config)
        shard = options.shard(config)
    except UsageError as exc:
        usage_exit(str(exc))
    config.pluginmanager.register(run, RUN_PLUGIN_NAME)
    config.pluginmanager.register(Verdicts(config, run), VERDICTS_PLUGIN_NAME)
    if shard is not None:
        config.pluginmanager.register(ShardSelection(shard), SHARDS_PLUGIN_NAME)


def _configured_run(config: pytest.Config) -> TurnproofRun:
    spec = options.setting(config, "adapter")
    run = TurnproofRun(
        adapter_spec=spec or DEFAULT_ADAPTER,
        pg_mode=options.pg_mode(config),
        pg_dsn=options.setting(config, "pg_dsn"),
        json_path=options.json_path(config),
        adapter_cmd=options.setting(config, "adapter_cmd"),
        operation_timeout=options.operation_timeout(config),
        log=lambda line: _write_line(config, line),
    )
    options.check_race_options(config)
    for option, path in options.output_paths(config).items():
        options.check_writable(option, path)
    if spec or run.adapter_cmd:  # an explicit choice is checked now: a typo costs no server
        run.adapter()
    return run


def usage_exit(message: str, run: TurnproofRun | None = None) -> NoReturn:
    """End the session: one line, exit code 2 (no verdict is given on a wrong set-up)."""
    if run is not None:
        run.usage_error, run.usage_error_shown = message, True
    pytest.exit(
        message if message.startswith("turnproof") else f"turnproof: {message}", USAGE_ERROR
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.pluginmanager.get_plugin(RUN_PLUGIN_NAME)
    if isinstance(run, TurnproofRun):
        run.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = turnproof_run(config)
    _select_requirements(config, items)
    for item in items:
        ids = requirement_ids(item)
        if not ids:
            continue
        tags = requirement_tags(item)
        bare = [i for i in tags if i in REQUIREMENTS]
        if bare:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.requirement names requirement(s) {bare}, not "
                f"clauses: name the clauses it checks (e.g. {bare[0]}a; `turnproof requirements`)"
            )
        unknown = [i for i in tags if i not in CLAUSES]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: unknown clause ID(s) {unknown}; see `turnproof requirements`"
            )
        item.user_properties.append(("requirements", " ".join(ids)))
        try:
            adapter = run.adapter()
        except UsageError as exc:
            usage_exit(str(exc), run)
        lacking = sorted(needed_capabilities(item) - adapter.capabilities)
        if lacking:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"adapter {adapter.name!r} lacks capability "
                    f"{', '.join(repr(c) for c in lacking)}"
                )
            )


def _select_requirements(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = options.wanted_requirements(config)
    if not wanted:
        return
    unknown = sorted(wanted - set(REQUIREMENTS) - set(CLAUSES))
    if unknown:
        usage_exit(
            f"--requirement: unknown ID(s) {unknown}; known: {', '.join(REQUIREMENTS)}, "
            "or one of their clauses (e.g. MSG-1d, see `turnproof requirements`)",
            turnproof_run(config),
        )
    keep, drop = [], []
    for item in items:
        tags = set(requirement_ids(item)) | set(requirement_tags(item))
        (keep if tags & wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        run = turnproof_run(items[0].config)
        run.deselected_scenarios += sum(
            1 for item in items if requirement_ids(item) and not item.stash.get(SHARDED_OUT, False)
        )


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the collection on
def pytest_collection_finish(session: pytest.Session) -> None:
    """Know what was selected, refuse a selection that chose no scenario, then pre-flight."""
    config = session.config
    run = turnproof_run(config)
    scenarios = [item for item in session.items if requirement_ids(item)]
    try:
        sharded = shard_selection(config)
        if (
            not session.items
            and run.deselected_scenarios
            and config.option.keyword
            and not (sharded and sharded.paths)
        ):
            raise UsageError(
                f"-k {config.option.keyword!r} matches no scenario; -k matches test names "
                "(e.g. -k finalize), to select scenarios by requirement ID use "
                "--requirement ID (e.g. --requirement MSG-4)"
            )
        if not scenarios:
            return
        run.selected = {scenario_id(item): requirement_ids(item) for item in scenarios}
        run.complete_run = _every_scenario_collected(session) and not run.deselected_scenarios
        runnable = any(item.get_closest_marker("skip") is None for item in scenarios)
        if runnable and not config.option.collectonly:
            preflight.prepare(run)
    except UsageError as exc:
        if not is_xdist_worker(config):
            usage_exit(str(exc), run)
        run.usage_error = str(exc)
        session.items[:] = []
    finally:
        if is_xdist_worker(config):
            config.workeroutput[WORKER_OUTPUT_KEY] = run.worker_summary()  # type: ignore[attr-defined]


def _every_scenario_collected(session: pytest.Session) -> bool:
    """Every module of the shipped suite was collected: a conformance run, judged strictly,
    rather than a developer's selection."""
    import scenarios

    every = {p.resolve() for p in Path(scenarios.__file__).parent.glob("test_*.py")}
    collected = {Path(str(item.path)).resolve() for item in session.items}
    sharded = shard_selection(session.config)
    if sharded is not None:  # this shard's share is narrower than the selection it came from
        collected |= sharded.paths
    return every <= collected


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
