"""From test reports to the requirement matrix and the verdict, serial or under pytest-xdist.

Each scenario's outcome is classified where the test ran (the exception is only there)
and travels on its report as the attribute `turnproof_outcome`, which pytest serialises
with the report, so pytest-xdist brings it to the controller. The process that sees every
report (the one process of a serial run, the controller under xdist) folds them, builds
the matrix once and writes the JSON once; workers write nothing.

Classification follows harness.errors: a UsageError stops the run (exit 2, no verdict); a
HarnessError is "no verdict" (ERROR); an ImplementationFailure, an AssertionError or any
other exception from the test's call is the implementation's FAIL.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

from harness.conformance_report import (
    ERROR,
    FAIL,
    PASS,
    SKIP,
    ScenarioOutcome,
    build_report,
    exit_status,
)
from harness.errors import HarnessError, ImplementationFailure, UsageError, leaves
from harness.pytest_plugin import options
from harness.pytest_plugin.run import (
    USAGE_ERROR,
    WORKER_OUTPUT_KEY,
    TurnproofRun,
    clause_tags,
    is_xdist_worker,
    requirement_ids,
    scenario_channel,
    scenario_id,
)
from harness.pytest_plugin.shards import SHARD_OUTPUT_KEY, shard_selection
from harness.report.html import write_html
from harness.report.race_picture import race_picture

OUTCOME_ATTRIBUTE = "turnproof_outcome"
VERDICTS_PLUGIN_NAME = "turnproof-verdicts"
USAGE = "usage"
_REASON_LENGTH = 300
_RERUN_PREFIX = "rerun: "
_OUTCOME_OPTIONS = (
    "keyword",
    "markexpr",
    "race_mode",
    "race_sample",
    "race_walks",
    "race_seed",
    "race_pct_depth",
    "race_schedule",
    "count",
)
"""Options besides --requirement that choose scenarios or change their outcomes: shards
of one run must agree on them (`turnproof merge` checks)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:  # type: ignore[misc]
    report: pytest.TestReport = yield
    ids = requirement_ids(item)
    if ids:
        classified = classify(report, call)
        if classified is not None and classified["outcome"] == USAGE:
            report.longrepr = f"turnproof: {classified['reason']}"  # the user's to fix: no trace
        if classified is not None:
            if report.when == "call":
                classified.update(race_picture(item, call, rerun=classified["rerun"]))
                if classified["rerun"]:  # JUnit reads the properties of the teardown report
                    item.user_properties.append(("rerun", classified["rerun"]))
            setattr(
                report,
                OUTCOME_ATTRIBUTE,
                {
                    "scenario": scenario_id(item),
                    "ids": ids,
                    "clauses": clause_tags(item),
                    "channel": scenario_channel(item),
                    **classified,
                },
            )
    return report


def classify(report: pytest.TestReport, call: pytest.CallInfo[None]) -> dict[str, str] | None:
    """The outcome of one phase of a scenario, with its one-line reason and rerun line."""
    if report.skipped:
        reason = ""
        if isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        return {"outcome": SKIP, "reason": reason, "rerun": ""}
    if not report.failed:
        return {"outcome": PASS, "reason": "", "rerun": ""} if report.when == "call" else None
    if call.excinfo is None:
        return {
            "outcome": FAIL,
            "reason": report.longreprtext.strip()[:_REASON_LENGTH],
            "rerun": "",
        }
    found = list(leaves(call.excinfo.value))
    for kind, outcome in ((UsageError, USAGE), (HarnessError, ERROR)):
        chosen = next((e for e in found if isinstance(e, kind)), None)
        if chosen is not None:
            return {"outcome": outcome, "reason": one_line(chosen), "rerun": rerun_line(chosen)}
    failure = next((e for e in found if isinstance(e, AssertionError)), found[0])
    implementation = report.when == "call" or isinstance(failure, ImplementationFailure)
    return {
        "outcome": FAIL if implementation else ERROR,
        "reason": one_line(failure),
        "rerun": rerun_line(failure),
    }


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for a table cell or a JSON field."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _REASON_LENGTH else text[: _REASON_LENGTH - 3] + "..."


def rerun_line(exc: BaseException) -> str:
    """The command that reruns exactly the failing interleaving, for a race; else ''."""
    for line in str(exc).splitlines():
        if line.startswith(_RERUN_PREFIX):
            return line.removeprefix(_RERUN_PREFIX)
    return ""


def is_user_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """A real Ctrl-C (or SIGTERM, which the turnproof command turns into one). pytest.exit()
    (a usage error) and the session's own stops (-x, a usage error met by a test) come
    through pytest_keyboard_interrupt too, as Exit or as subclasses of KeyboardInterrupt."""
    return type(excinfo.value) is KeyboardInterrupt


class Verdicts:
    """Folds the session's reports into outcomes and ends the session with the verdict.

    Registered as a plugin (VERDICTS_PLUGIN_NAME) by the hooks' pytest_configure.
    """

    def __init__(self, config: pytest.Config, run: TurnproofRun) -> None:
        self.config = config
        self.run = run
        self.session: pytest.Session | None = None
        self.workers_complete: list[bool] = []
        self.worker_selection: dict[str, tuple[str, ...]] = {}
        self.worker_postgres = ""
        self.worker_clone_ms: list[float] = []
        self.worker_shard: dict[str, Any] | None = None
        self.durations: dict[str, float] = {}
        self.started = time.monotonic()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data: dict[str, Any] | None = getattr(report, OUTCOME_ATTRIBUTE, None)
        if data is None:
            return
        if data["outcome"] == USAGE:
            self._usage_error(data["reason"], stop=True)
            return
        scenario = data["scenario"]
        self.durations[scenario] = self.durations.get(scenario, 0.0) + report.duration
        previous = self.run.outcomes.get(scenario)
        if previous is None or previous.outcome == PASS:
            self.run.outcomes[scenario] = ScenarioOutcome(
                scenario,
                tuple(data["ids"]),
                data["outcome"],
                data["reason"],
                data["rerun"],
                timeline=data.get("timeline") or (previous.timeline if previous else None),
                explored=data.get("explored") or (previous.explored if previous else ""),
                clauses=tuple(data["clauses"]),
                channel=data["channel"],
            )

    def _usage_error(self, message: str, *, stop: bool) -> None:
        """A usage error found after the run started: no verdict, exit 2; with `stop`, the
        session stops now and pytest prints the line as it stops."""
        if self.run.usage_error is not None:
            return
        self.run.usage_error = message
        if stop and self.session is not None:
            self.session.shouldstop = f"turnproof: {message}"
            self.run.usage_error_shown = True

    @pytest.hookimpl(tryfirst=True)  # before pytest's own report of it, should that raise
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if is_user_interrupt(excinfo):
            self.run.interrupted = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist controller: a worker ended; read what it selected and whether it could run."""
        summary = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if summary is None:
            self.workers_complete.append(False)
            return
        if summary["usage_error"]:
            self._usage_error(summary["usage_error"], stop=False)
        self.workers_complete.append(summary["complete_run"])
        self.worker_selection.update({k: tuple(v) for k, v in summary["selected"].items()})
        self.worker_postgres = self.worker_postgres or summary["postgres"]
        if summary["median_clone_ms"] is not None:
            self.worker_clone_ms.append(summary["median_clone_ms"])
        shard = getattr(node, "workeroutput", {}).get(SHARD_OUTPUT_KEY)
        self.worker_shard = self.worker_shard or shard

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        run = self.run
        if is_xdist_worker(self.config):
            self.config.workeroutput[WORKER_OUTPUT_KEY] = run.worker_summary()  # type: ignore[attr-defined]
            return
        if run.usage_error is not None:
            session.exitstatus = USAGE_ERROR
            return
        xdist = self._under_xdist()
        selected = self.worker_selection if xdist else run.selected
        sharded = shard_selection(self.config)
        shard = self.worker_shard if xdist else (sharded.summary if sharded else None)
        if self.config.option.collectonly or not (run.outcomes or selected or shard):
            return
        complete = (
            bool(self.workers_complete) and all(self.workers_complete)
            if xdist
            else run.complete_run
        )
        adapter = run.adapter()
        postgres = (
            f"{self.worker_postgres} (one server per xdist worker, {len(self.workers_complete)})"
            if xdist
            else run.postgres_description
        )
        clone_ms = run.median_clone_ms() if not xdist else _mean(self.worker_clone_ms)
        if clone_ms is not None:
            postgres += f"; median database clone {clone_ms:.1f} ms"
        selected_ids = {i for ids in selected.values() for i in ids} if selected else None
        elsewhere: frozenset[str] = frozenset()
        if shard is not None:
            selected_ids = set(shard["requirements"])
            elsewhere = frozenset(shard["selected_requirements"]) - selected_ids
        run.report = build_report(
            run.outcomes.values(),
            adapter_name=adapter.name,
            adapter_spec=run.adapter_cmd or run.adapter_spec,
            capabilities=adapter.capabilities,
            postgres=postgres,
            complete_run=complete and not run.interrupted and shard is None,
            interrupted=run.interrupted,
            selected=selected_ids,
            shard=f"{shard['index']}/{shard['total']}" if shard else "",
            elsewhere=elsewhere,
        )
        run.report.suite = suite_version()
        run.report.selection = {
            "options": selection_options(self.config),
            "whole_suite": complete if shard else run.report.complete_run,
        }
        run.report.shard = shard
        if not run.report.verdict.ok and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if shard and not shard["scenarios"] and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # an empty share of a run is not an error
        for outcome in run.report.scenarios:
            outcome.duration = round(self.durations.get(outcome.nodeid, 0.0), 3)
        run.report.run = {
            "seconds": round(time.monotonic() - self.started, 1),
            "exit_status": exit_status(run.report.verdict, run.interrupted),
            "version": turnproof_version(),
        }
        if run.json_path is not None:
            run.report.write_json(run.json_path)
        html = options.html_path(self.config)
        if html is not None:
            write_html(run.report.to_json(), html)

    def _under_xdist(self) -> bool:
        return self.config.pluginmanager.has_plugin("dsession")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        if run.usage_error is not None:
            if not run.usage_error_shown and not is_xdist_worker(self.config):
                terminalreporter.write_line(f"turnproof: {run.usage_error}", red=True, bold=True)
            return
        if run.report is None:
            return
        terminalreporter.section("turnproof requirement matrix")
        for line in run.report.render():
            terminalreporter.write_line(line)


def selection_options(config: pytest.Config) -> dict[str, Any]:
    """What chose the scenarios and shaped their outcomes, as given to this run."""
    chosen: dict[str, Any] = {"requirements": sorted(options.wanted_requirements(config))}
    for name in _OUTCOME_OPTIONS:
        chosen[name] = config.getoption(name, None)
    chosen["operation_timeout"] = options.setting(config, "operation_timeout")
    return chosen


def suite_version() -> dict[str, str]:
    """turnproof's version and a digest of the shipped scenario modules: two runs judged by
    the same suite only when both agree (an edited checkout keeps its version number)."""
    import scenarios

    digest = hashlib.sha256()
    for path in sorted(Path(scenarios.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"version": turnproof_version(), "digest": digest.hexdigest()[:16]}


def turnproof_version() -> str:
    try:
        return version("turnproof")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
