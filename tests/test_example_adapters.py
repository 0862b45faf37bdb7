"""The two example adapters under the whole conformance suite, as their READMEs run them.

- examples/sqlalchemy_orm (SQLAlchemy 2 async ORM): a conforming implementation, also
  through `python -m harness.worker` (the kill scenarios);
- examples/subset_adapter (`turns` and `usage` only): certified on what it declares, and
  the capability guard proves no scenario it ran called anything outside those two.

Each example is a folder put on the path (in process, and through PYTHONPATH for the
worker processes), as a user runs an adapter from its own folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.requirements import CATALOG

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SMALL_RACE_BUDGET = ("--race-sample", "4", "--race-walks", "1")
"""Every scenario runs and every race must still happen, on fewer schedules: an ORM
operation is several statements, so the default budget makes its 8-writer races take
minutes (the README's `turnproof run` uses the default)."""


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch):
    """Put an example's folder on the path of this process and of its children."""

    def put(folder: str) -> None:
        path = str(EXAMPLES / folder)
        monkeypatch.syspath_prepend(path)
        monkeypatch.setenv("PYTHONPATH", path)

    return put


def statuses(run) -> dict[str, str]:
    return {row["id"]: row["status"] for row in run.report["rows"]}


def test_the_sqlalchemy_orm_example_is_a_conforming_implementation(run_scenarios, example_on_path):
    example_on_path("sqlalchemy_orm")

    run = run_scenarios("orm_turns:adapter", *SMALL_RACE_BUDGET)

    output = run.result.stdout.str()
    assert run.report is not None, f"the run wrote no report:\n{output}"
    declared = {r.id for r in CATALOG if r.capability in run.report["capabilities"]}
    failing = {i: s for i, s in statuses(run).items() if i in declared and s != "pass"}
    assert failing == {}, f"expected every declared requirement to pass, found {failing}:\n{output}"
    verdict = run.report["verdict"]
    assert (verdict["ok"], verdict["conforming"]) == (True, True), (
        f"expected a conforming verdict, got {verdict['line']!r}:\n{output}"
    )
    assert run.result.ret == 0, f"expected exit 0, got {run.result.ret}:\n{output}"


def test_the_subset_example_passes_what_it_declares_and_calls_nothing_else(
    run_scenarios, example_on_path
):
    example_on_path("subset_adapter")

    run = run_scenarios("subset_turns:adapter")

    output = run.result.stdout.str()
    assert run.report is not None, f"the run wrote no report:\n{output}"
    assert "CapabilityViolation" not in output, (
        f"a scenario called an operation outside 'turns' and 'usage':\n{output}"
    )
    declared = {r.id for r in CATALOG if r.capability in ("turns", "usage")}
    found = statuses(run)
    passed = {i for i, s in found.items() if s == "pass"}
    assert passed == declared, (
        f"expected exactly the declared requirements {sorted(declared)} to pass, found {found}"
    )
    judged = {i: s for i, s in found.items() if i not in declared and s in ("fail", "error")}
    assert judged == {}, f"expected no verdict on undeclared requirements, found {judged}"
    assert run.errors() == 0, f"expected no scenario without a verdict:\n{output}"
    verdict = run.report["verdict"]
    assert (verdict["ok"], verdict["conforming"]) == (True, False), (
        f"expected PASS on a subset, not conforming; got {verdict['line']!r}:\n{output}"
    )
    assert run.result.ret == 0, f"expected exit 0, got {run.result.ret}:\n{output}"
