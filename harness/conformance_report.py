"""The requirement matrix: scenario outcomes folded per requirement ID, and the verdict.

A requirement passes when at least one of its scenarios ran and none failed;
the verdict is about the requirements the adapter declares, so a partial
implementation is certified on what it claims and told plainly that it does
not conform.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.requirements import (
    CATALOG,
    CORE_CAPABILITIES,
    NOT_YET_COVERED,
    Requirement,
)

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
NOT_COVERED, NOT_RUN, NOT_DECLARED = "not covered", "not run", "not declared"
NOT_REACHED = "not reached"
OTHER_SHARD = "other shard"
"""Selected, but its scenarios are in another shard of the run: `turnproof merge` judges it."""


@dataclass
class ScenarioOutcome:
    nodeid: str
    requirement_ids: tuple[str, ...]
    outcome: str
    reason: str = ""
    """Why it did not pass, in one line (a skip's reason, a failure's first line)."""
    rerun: str = ""
    """For a failing race: the command that reruns exactly its interleaving."""
    duration: float = 0.0
    """Seconds, set-up and tear-down included."""
    timeline: dict[str, Any] | None = None
    """For a race: the failing (or, when it passed, the last) interleaving, as
    harness.report.timeline.Timeline.to_json() draws it."""
    explored: str = ""
    """For a race: what its exploration covered, in one line."""
    clauses: tuple[str, ...] = ()
    """The clause IDs (`MSG-1d`) the scenario checks; the matrix stays per requirement."""
    channel: str = ""
    """How the scenario reaches a bug: sequential, race, kill, restart, network or skew."""


@dataclass
class FailedScenario:
    """A failing or erroring scenario as the JSON reports it: no scraping of pytest's output."""

    scenario: str
    requirements: list[str]
    outcome: str
    reason: str
    rerun: str


@dataclass
class RequirementRow:
    id: str
    text: str
    capability: str
    status: str
    scenarios: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    reason: str = ""
    failing: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    ok: bool
    conforming: bool
    line: str


@dataclass
class ConformanceReport:
    adapter_name: str
    adapter_spec: str
    capabilities: list[str]
    postgres: str
    rows: list[RequirementRow]
    verdict: Verdict
    complete_run: bool
    interrupted: bool = False
    failures: list[FailedScenario] = field(default_factory=list)
    scenarios: list[ScenarioOutcome] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    """How the run went: seconds, exit_status, turnproof's version (set at its end)."""
    suite: dict[str, str] = field(default_factory=dict)
    """Which suite judged: turnproof's version and a digest of the scenario modules."""
    selection: dict[str, Any] = field(default_factory=dict)
    """What chose and shaped the scenarios (`options`: --requirement, -k, -m, race options,
    --count), and whether it was the whole suite (`whole_suite`)."""
    shard: dict[str, Any] | None = None
    """For a `--shard K/N` run: index, total, the whole selection (`selected_scenarios`,
    `selected_requirements`) and this shard's share (`scenarios`, `requirements`)."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def render(self) -> list[str]:
        """The matrix as terminal lines: one per requirement, failures named below."""
        lines = [
            f"adapter {self.adapter_name!r} ({self.adapter_spec}); capabilities: "
            f"{', '.join(self.capabilities)}",
            f"database: {self.postgres}",
            "",
            f"{'ID':<7} {'result':<12} {'scenarios':<10} requirement",
        ]
        shown = (
            self.rows
            if self.complete_run
            else [r for r in self.rows if r.scenarios or r.status == NOT_REACHED]
        )
        elsewhere = sum(1 for r in self.rows if r.status == OTHER_SHARD)
        for row in shown:
            counts = _counts(row)
            detail = row.text if row.status in (PASS, FAIL, ERROR) else f"{row.text} [{row.reason}]"
            lines.append(f"{row.id:<7} {row.status.upper():<12} {counts:<10} {detail}")
            lines.extend(f"{'':<7} failed: {nodeid}" for nodeid in row.failing)
        if len(shown) < len(self.rows):
            unselected = len(self.rows) - len(shown) - elsewhere
            lines.append(f"({unselected} requirements had no scenario selected)")
        if elsewhere:
            lines.append(f"({elsewhere} requirements are in other shards of this run)")
        lines += ["", self.verdict.line]
        return lines


def build_report(
    outcomes: Iterable[ScenarioOutcome],
    *,
    adapter_name: str,
    adapter_spec: str,
    capabilities: frozenset[str],
    postgres: str,
    complete_run: bool,
    interrupted: bool = False,
    selected: set[str] | None = None,
    shard: str = "",
    elsewhere: frozenset[str] = frozenset(),
) -> ConformanceReport:
    """The matrix of these outcomes. `selected`: the requirement IDs whose scenarios were
    selected (None: not known, as when pytest-xdist workers were interrupted); a selected
    requirement with no outcome was not reached. For a shard (`shard` "K/N"), `elsewhere`:
    the selected requirements whose scenarios are in the other shards."""
    outcomes = sorted(outcomes, key=lambda o: o.nodeid)  # the same rows in any run order
    by_id: dict[str, list[ScenarioOutcome]] = {}
    for outcome in outcomes:
        for requirement_id in outcome.requirement_ids:
            by_id.setdefault(requirement_id, []).append(outcome)
    rows = [_row(r, by_id.get(r.id, []), capabilities) for r in CATALOG]
    for row in rows:
        chosen = row.id in selected if selected is not None else interrupted
        if row.status == NOT_RUN and chosen:
            row.status, row.reason = NOT_REACHED, _not_reached_reason(interrupted)
        elif row.status == NOT_RUN and row.id in elsewhere:
            row.status, row.reason = OTHER_SHARD, f"in another shard than {shard}"
    failures = [
        FailedScenario(o.nodeid, list(o.requirement_ids), o.outcome, o.reason, o.rerun)
        for o in outcomes
        if o.outcome in (FAIL, ERROR)
    ]
    return ConformanceReport(
        adapter_name=adapter_name,
        adapter_spec=adapter_spec,
        capabilities=sorted(capabilities),
        postgres=postgres,
        rows=rows,
        verdict=_verdict(rows, adapter_name, capabilities, complete_run, interrupted, shard),
        complete_run=complete_run,
        interrupted=interrupted,
        failures=failures,
        scenarios=sorted(outcomes, key=lambda o: o.nodeid),
    )


def _not_reached_reason(interrupted: bool) -> str:
    if interrupted:
        return "selected, not reached: the run was interrupted"
    return "selected, not reached: its scenarios never reported (a worker died?)"


def _row(
    requirement: Requirement, outcomes: list[ScenarioOutcome], capabilities: frozenset[str]
) -> RequirementRow:
    row = RequirementRow(
        id=requirement.id,
        text=requirement.text,
        capability=requirement.capability,
        status=NOT_RUN,
        scenarios=len(outcomes),
    )
    for outcome in outcomes:
        if outcome.outcome == PASS:
            row.passed += 1
        elif outcome.outcome == FAIL:
            row.failed += 1
            row.failing.append(outcome.nodeid)
        elif outcome.outcome == ERROR:
            row.errors += 1
            row.failing.append(outcome.nodeid)
        else:
            row.skipped += 1
            row.reason = row.reason or outcome.reason
    if requirement.capability not in capabilities:
        row.status, row.reason = (
            NOT_DECLARED,
            f"adapter lacks capability '{requirement.capability}'",
        )
    elif row.failed:
        row.status = FAIL
    elif row.errors:
        row.status, row.reason = ERROR, "harness error: no verdict"
    elif row.passed:
        row.status = PASS
    elif row.skipped:
        row.status = SKIP
    elif requirement.id in NOT_YET_COVERED:
        row.status, row.reason = NOT_COVERED, NOT_YET_COVERED[requirement.id]
    else:
        row.reason = "no scenario of it was selected"
    return row


def _verdict(
    rows: list[RequirementRow],
    adapter: str,
    capabilities: frozenset[str],
    complete_run: bool,
    interrupted: bool,
    shard: str = "",
) -> Verdict:
    """`ok` only when nothing declared failed, errored or went unproven; `conforming` only
    for a whole, uninterrupted run that passed with every core capability declared."""
    declared = [r for r in rows if r.status != NOT_DECLARED]
    failed = [r.id for r in declared if r.status == FAIL]
    errors = [r.id for r in declared if r.status == ERROR]
    unreached = [r.id for r in declared if r.status == NOT_REACHED]
    unproven = [r.id for r in declared if r.status in (SKIP, NOT_RUN)]
    passed = [r.id for r in declared if r.status == PASS]
    uncovered = [r.id for r in declared if r.status == NOT_COVERED]
    missing_core = sorted(CORE_CAPABILITIES - capabilities)
    if failed:
        return Verdict(False, False, f"FAIL: {adapter!r} breaks {', '.join(failed)}")
    if errors:
        return Verdict(
            False, False, f"HARNESS ERROR: no verdict for {', '.join(errors)} (see above)"
        )
    if interrupted:
        return Verdict(
            False,
            False,
            f"INCOMPLETE: the run was interrupted; {len(passed)} requirements passed, "
            f"{len(unreached)} not reached ({', '.join(unreached) or 'none'}); no verdict",
        )
    if unreached:
        return Verdict(False, False, f"INCOMPLETE: {', '.join(unreached)} selected but not reached")
    if unproven and complete_run:
        return Verdict(
            False, False, f"INCOMPLETE: {', '.join(unproven)} did not pass a single scenario"
        )
    note = f"; not covered by this suite yet: {', '.join(uncovered)}" if uncovered else ""
    if shard:
        return Verdict(
            True,
            False,
            f"PASS (shard {shard}): {adapter!r} passes the {len(passed)} requirements of this "
            "shard; `turnproof merge` every shard's JSON report for the run's verdict",
        )
    if not complete_run:
        return Verdict(
            True,
            False,
            f"PASS (partial selection): {adapter!r} passes the {len(passed)} requirements "
            "selected; not a conformance verdict (run the whole suite for one)",
        )
    if missing_core:
        scope = (
            f"NOT a conforming implementation (lacks {', '.join(missing_core)}); "
            "certified on its declared capabilities only"
        )
    else:
        scope = "a conforming implementation"
    return Verdict(
        True,
        not missing_core,
        f"PASS: {adapter!r} passes {len(passed)} requirements, {scope}{note}",
    )


def _counts(row: RequirementRow) -> str:
    if row.scenarios == 0:
        return "-"
    if row.failed or row.errors:
        return f"{row.failed + row.errors}/{row.scenarios} bad"
    return str(row.scenarios)


def exit_status(verdict: Verdict, interrupted: bool) -> int:
    """What `turnproof run` exits with for this verdict (its exit-code table)."""
    if interrupted:
        return 130
    return 0 if verdict.ok else 1


def merge_reports(named: Sequence[tuple[str, dict[str, Any]]]) -> ConformanceReport:
    """The report the unsharded run would have written, from every shard's JSON report
    (`(name, report)` pairs). Reports that do not make up one run are a UsageError."""
    if not named:
        raise UsageError("give the JSON report of every shard")
    for name, report in named:
        if not isinstance(report, dict) or not isinstance(report.get("shard"), dict):
            raise UsageError(
                f"{name} is not the JSON report of a shard (turnproof run --shard K/N)"
            )
    first_name, first = named[0]
    for key, what in (
        ("adapter_spec", "adapters"),
        ("capabilities", "adapter capabilities"),
        ("suite", "suite versions"),
        ("selection", "selections"),
    ):
        for name, report in named[1:]:
            mine = report.get(key) if key != "selection" else report["selection"].get("options")
            theirs = first.get(key) if key != "selection" else first["selection"].get("options")
            if mine != theirs:
                raise UsageError(
                    f"{first_name} and {name} come from different {what} "
                    f"({theirs!r} and {mine!r}); merge the shards of one run"
                )
    shards = {name: report["shard"] for name, report in named}
    total = shards[first_name]["total"]
    whole = (shards[first_name]["selected_scenarios"], shards[first_name]["selected_requirements"])
    seen: dict[int, str] = {}
    owner: dict[str, str] = {}
    for name, shard in shards.items():
        if shard["total"] != total:
            raise UsageError(
                f"{first_name} is a shard of {total} and {name} of {shard['total']}; merge the "
                "shards of one run"
            )
        if (shard["selected_scenarios"], shard["selected_requirements"]) != whole:
            raise UsageError(
                f"{first_name} and {name} come from different selections; merge the shards of "
                "one run"
            )
        if shard["index"] in seen:
            raise UsageError(
                f"shard {shard['index']}/{total} given twice: {seen[shard['index']]} and {name}"
            )
        seen[shard["index"]] = name
        for scenario in shard["scenarios"]:
            if scenario in owner:
                raise UsageError(f"scenario {scenario} is in both {owner[scenario]} and {name}")
            owner[scenario] = name
    missing = [f"{i}/{total}" for i in range(1, total + 1) if i not in seen]
    if missing:
        raise UsageError(f"shard(s) {', '.join(missing)} missing: give every shard's report")
    if len(owner) != whole[0]:
        raise UsageError(
            f"the shards ran {len(owner)} scenarios of a selection of {whole[0]}: "
            "merge the shards of one run"
        )
    known = {f.name for f in fields(ScenarioOutcome)}
    outcomes = [
        ScenarioOutcome(
            **{k: v for k, v in s.items() if k in known}
            | {
                "requirement_ids": tuple(s["requirement_ids"]),
                "clauses": tuple(s.get("clauses", ())),
            }
        )
        for _, report in named
        for s in report["scenarios"]
    ]
    interrupted = any(report["interrupted"] for _, report in named)
    whole_suite = all(report["selection"].get("whole_suite") for _, report in named)
    postgres = sorted({report["postgres"] for _, report in named})
    merged = build_report(
        outcomes,
        adapter_name=first["adapter_name"],
        adapter_spec=first["adapter_spec"],
        capabilities=frozenset(first["capabilities"]),
        postgres="; ".join(postgres),
        complete_run=whole_suite and not interrupted,
        interrupted=interrupted,
        selected={r for shard in shards.values() for r in shard["requirements"]},
    )
    merged.suite = first["suite"]
    merged.selection = dict(first["selection"], whole_suite=whole_suite)
    merged.run = {
        "seconds": round(sum(report["run"].get("seconds", 0.0) for _, report in named), 1),
        "exit_status": exit_status(merged.verdict, interrupted),
        "version": first["run"].get("version", ""),
        "merged": [name for name, _ in sorted(named, key=lambda n: n[1]["shard"]["index"])],
    }
    return merged


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report from disk; unreadable or not JSON is a UsageError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a turnproof JSON report")
    return data
