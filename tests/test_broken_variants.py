"""Every declared broken variant fails exactly the clauses it declares, through its channel.

The cases come from the declarations (`reference_impl.broken_variant.declared_variants()`),
never from a table kept here. Each variant runs, through the public --adapter option, the
scenarios of the requirements its clauses belong to, and must:

- fail a scenario tagged with each clause it declares;
- fail no scenario that checks none of its clauses (it breaks those clauses and nothing else
  of those requirements);
- when its channel is not sequential, fail no sequential scenario: only the race, the kill,
  the crash, the network fault or the skewed clock shows the bug.

The reference passing the whole suite at the default race budget
(tests/test_turnproof_run.py, the main job) proves each of those scenarios can pass.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.requirements import CLAUSES
from reference_impl.broken_variant import BrokenVariant, declared_variants

VARIANTS = sorted(declared_variants())
FAILED, ERROR = "fail", "error"


def requirements_of(variant: BrokenVariant) -> tuple[str, ...]:
    return tuple(sorted({CLAUSES[c].requirement_id for c in variant.breaks}))


def needs_own_server(variant: BrokenVariant) -> bool:
    """A crash of the server needs a server the run owns (not --pg-dsn)."""
    return variant.channel == "restart"


SEQUENTIAL_RACE_BUDGET = ("--race-sample", "3", "--race-walks", "0")
"""A sequential bug shows on the first schedules of a race as on any plain scenario, so the
races of its requirements run the fewest schedules that still make every race happen on
the reference; variants of the other channels keep the default budget, which is what
catches them in a user's run."""


def budget_of(variant: BrokenVariant) -> tuple[str, ...]:
    return SEQUENTIAL_RACE_BUDGET if variant.channel == "sequential" else ()


@pytest.fixture
def run_selection(pytester: pytest.Pytester, run_scenarios, monkeypatch):
    """Run the scenarios of `requirements` against `adapter`; the report's scenarios."""

    def run(
        adapter: str, requirements: tuple[str, ...], own_server: bool, *options: str
    ) -> dict[str, Any]:
        selection = ("--requirement", ",".join(requirements), *options)
        if not own_server:
            suite = run_scenarios(adapter, *selection)
            assert suite.report is not None, suite.result.stdout.str()
            return {"ret": suite.result.ret, **suite.report, "out": suite.result.stdout.str()}
        monkeypatch.delenv("TURNPROOF_PG_DSN", raising=False)
        report_path = pytester.path / "report.json"
        result = pytester.runpytest_inprocess(
            "--pyargs",
            "scenarios",
            "-p",
            "no:cacheprovider",
            "--adapter",
            adapter,
            "--pg",
            "embedded",
            "--turnproof-json",
            str(report_path),
            *selection,
        )
        assert report_path.exists(), result.stdout.str()
        report = json.loads(report_path.read_text())
        return {"ret": result.ret, **report, "out": result.stdout.str()}

    return run


def _describe(scenarios: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {s['outcome']} [{s['channel']}] {' '.join(s['clauses'])} {s['nodeid']}: "
        f"{s['reason'][:200]}"
        for s in scenarios
    )


@pytest.mark.parametrize(("spec", "variant"), VARIANTS, ids=[s.split(":")[1] for s, _ in VARIANTS])
def test_variant_fails_exactly_its_clauses(run_selection, spec, variant):
    run = run_selection(
        spec, requirements_of(variant), needs_own_server(variant), *budget_of(variant)
    )
    bad = [s for s in run["scenarios"] if s["outcome"] in (FAILED, ERROR)]
    declared = set(variant.breaks)
    uncaught = [
        c
        for c in variant.breaks
        if not any(s["outcome"] == FAILED and c in s["clauses"] for s in bad)
    ]
    assert not uncaught, (
        f"{spec} declares {variant.breaks}; no scenario of {uncaught} failed:\n"
        f"{_describe(bad)}\n{run['out'][-3000:]}"
    )
    beyond = [s for s in bad if not declared & set(s["clauses"])]
    assert not beyond, (
        f"{spec} declares {variant.breaks}, but scenarios of other clauses failed too:\n"
        f"{_describe(beyond)}"
    )
    if variant.channel != "sequential":
        sequential = [s for s in bad if s["channel"] == "sequential"]
        assert not sequential, (
            f"{spec} declares channel {variant.channel!r}, but sequential scenarios caught it:\n"
            f"{_describe(sequential)}"
        )
    assert run["ret"] == pytest.ExitCode.TESTS_FAILED
    assert not run["verdict"]["ok"]


def test_a_variant_declares_clauses_and_a_channel():
    """A declaration without clauses or with an unknown channel fails to load."""
    with pytest.raises(ValueError, match="declare breaks"):
        BrokenVariant(type("Store", (), {}), breaks=(), channel="race")  # type: ignore[arg-type]
    assert all(c in CLAUSES for _, v in VARIANTS for c in v.breaks)
