"""`--shard K/N` and `turnproof merge`: the shards of a run, merged, are the unsharded run.

Run-and-merge tests use small --requirement selections (a race included) so the project's
tests stay fast; the partition test collects the whole suite without running it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main as turnproof
from harness.conformance_report import ScenarioOutcome, build_report
from harness.pytest_plugin.run import requirement_ids, scenario_id
from harness.sharding import Unit, plan
from tests.test_usage_errors import assert_one_usage_line, run_suite
from tests.turnproof_command import start_turnproof_run

SELECTION = ("--requirement", "MSG-2,MSG-4,MSG-7", "--race-sample", "4", "--race-walks", "0")
"""Three requirements that fall into different shards, one of them with a race."""
BROKEN = "reference_impl.broken:unguarded_step"
TX_SELECTION = ("--requirement", "MSG-2,MSG-7")


def matrix(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("id", "status", "scenarios", "passed", "failed", "skipped", "errors", "failing")
    return [tuple(row[k] for k in keys) for row in report["rows"]]


def merge(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`turnproof merge ARGS`: its exit status, stdout and stderr."""
    code = turnproof(["merge", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, report: dict[str, Any] | None) -> Path:
    assert report is not None, f"no report for {path.name}"
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize(
    ("adapter", "code", "verdict"),
    [
        ("reference", 0, "PASS (partial selection): 'reference' passes the 3 requirements"),
        (BROKEN, 1, "FAIL: 'broken-unguarded-step' breaks MSG-4"),
    ],
    ids=["reference", "unguarded-step"],
)
def test_two_shards_merged_are_the_unsharded_run(
    run_scenarios, tmp_path, capsys, adapter, code, verdict
):
    whole = run_scenarios(adapter, *SELECTION)
    shards = [run_scenarios(adapter, *SELECTION, "--shard", f"{k}/2") for k in (1, 2)]
    paths = [write(tmp_path / f"shard{k}.json", s.report) for k, s in enumerate(shards, 1)]
    merged_path = tmp_path / "merged.json"

    status, out, err = merge(capsys, *paths, "--json", merged_path)

    assert whole.report is not None, whole.result.stdout.str()
    assert whole.result.ret == code, whole.result.stdout.str()
    assert status == code, err
    merged = json.loads(merged_path.read_text())
    assert matrix(merged) == matrix(whole.report)
    assert merged["verdict"] == whole.report["verdict"]
    assert merged["verdict"]["line"].startswith(verdict)
    assert out.rstrip().endswith(merged["verdict"]["line"])
    assert merged["run"]["exit_status"] == whole.report["run"]["exit_status"] == code
    for shard in shards:
        assert shard.report is not None
        assert shard.report["shard"]["scenarios"], "a shard is empty"
        assert shard.report["verdict"]["conforming"] is False
        statuses = {row["status"] for row in shard.report["rows"]}
        assert "other shard" in statuses, "the other shard's requirements say where they are"


def test_an_empty_shard_passes_and_merges(run_scenarios, tmp_path, capsys):
    """One requirement is one group: with two shards, one of them runs nothing, exits 0,
    and still writes the report the merge needs."""
    selection = ("--requirement", "MSG-2")
    whole = run_scenarios("reference", *selection)
    shards = [run_scenarios("reference", *selection, "--shard", f"{k}/2") for k in (1, 2)]
    assert [s.result.ret for s in shards] == [0, 0]
    assert sorted(len(s.report["shard"]["scenarios"]) for s in shards if s.report) == [0, 4]
    paths = [write(tmp_path / f"shard{k}.json", s.report) for k, s in enumerate(shards, 1)]
    out = tmp_path / "merged.json"
    status, _, err = merge(capsys, *paths, "--json", out)
    assert status == 0, err
    assert matrix(json.loads(out.read_text())) == matrix(whole.report or {})


def _shard_items(pytester: pytest.Pytester, *args: str) -> dict[str, tuple[str, ...]]:
    """Scenario id -> requirement IDs of what a collect-only run (with ARGS) selects."""
    recorder = pytester.inline_run(
        "--pyargs", "scenarios", "-p", "no:cacheprovider", "--collect-only", *args
    )
    (call,) = recorder.getcalls("pytest_collection_finish")
    return {scenario_id(i): requirement_ids(i) for i in call.session.items}


@pytest.mark.parametrize("total", [2, 3, 5])
def test_each_scenario_lands_in_exactly_one_shard(pytester, total):
    everything = _shard_items(pytester)
    shards = [_shard_items(pytester, "--shard", f"{k}/{total}") for k in range(1, total + 1)]

    assert sum(len(s) for s in shards) == len(everything), "a scenario ran twice or never"
    assert set().union(*shards) == set(everything)
    shard_of_requirement: dict[str, int] = {}
    shard_of_function: dict[str, int] = {}
    for index, shard in enumerate(shards):
        for scenario, ids in shard.items():
            for requirement_id in ids:
                assert shard_of_requirement.setdefault(requirement_id, index) == index, (
                    f"{requirement_id} is split across shards"
                )
            function = scenario.split("[")[0]
            assert shard_of_function.setdefault(function, index) == index, (
                f"the variants of {function} are split across shards"
            )
    assert sum(1 for s in shards if s) >= 2, "sharding put everything in one shard"


@pytest.mark.parametrize("value", ["0/2", "3/2", "x", "1/0"])
def test_a_bad_shard_is_one_line(pytester, value):
    assert_one_usage_line(run_suite(pytester, "--shard", value), f"--shard {value!r}: give K/N")


def _report(index: int, total: int, scenarios: list[str], **changes: Any) -> dict[str, Any]:
    """A shard's JSON report of passing MSG-2 scenarios, as `turnproof run --shard` writes."""
    outcomes = [ScenarioOutcome(s, ("MSG-2",), "pass") for s in scenarios]
    report = build_report(
        outcomes,
        adapter_name="reference",
        adapter_spec="reference",
        capabilities=frozenset({"turns"}),
        postgres="test",
        complete_run=False,
        selected={"MSG-2"},
        shard=f"{index}/{total}",
    ).to_json()
    report["suite"] = {"version": "1", "digest": "d"}
    report["selection"] = {"options": {"requirements": ["MSG-2"]}, "whole_suite": False}
    report["run"] = {"seconds": 1.0}
    report["shard"] = {
        "index": index,
        "total": total,
        "selected_scenarios": 2,
        "selected_requirements": ["MSG-2"],
        "scenarios": scenarios,
        "requirements": ["MSG-2"] if scenarios else [],
    }
    for key, value in changes.items():
        report[key] = value
    return report


def _reshard(report: dict[str, Any], **shard: Any) -> dict[str, Any]:
    return report | {"shard": report["shard"] | shard}


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (_report(2, 2, ["b"], adapter_spec="other"), "come from different adapters"),
        (_report(2, 2, ["b"], suite={"version": "2", "digest": "d"}), "different suite versions"),
        (
            _report(2, 2, ["b"], selection={"options": {"requirements": ["MSG-3"]}}),
            "different selections",
        ),
        (_reshard(_report(2, 2, ["b"]), total=3), "a shard of 2 and"),
        (_reshard(_report(2, 2, ["b"]), selected_scenarios=3), "different selections"),
        (_report(1, 2, ["b"]), "shard 1/2 given twice"),
        (_report(2, 2, ["a"]), "scenario a is in both"),
        (_report(2, 2, ["b"], shard=None), "is not the JSON report of a shard"),
        ("{not json", "cannot read a JSON report"),
    ],
    ids=[
        "adapter",
        "suite",
        "selection",
        "total",
        "selection-size",
        "duplicate",
        "overlap",
        "unsharded",
        "unreadable",
    ],
)
def test_merge_refuses_reports_of_different_runs(tmp_path, capsys, second, expected):
    first = write(tmp_path / "first.json", _report(1, 2, ["a"]))
    other = tmp_path / "second.json"
    other.write_text(second if isinstance(second, str) else json.dumps(second))
    status, out, err = merge(capsys, first, other)
    assert status == 2, out + err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err, err


def test_merge_refuses_a_missing_shard(tmp_path, capsys):
    first = write(tmp_path / "first.json", _report(1, 2, ["a"]))
    status, _, err = merge(capsys, first)
    assert status == 2
    assert err.strip() == "turnproof merge: shard(s) 2/2 missing: give every shard's report"


def test_merge_of_consistent_reports_passes(tmp_path, capsys):
    """The control of the refusals above: the same reports, made consistent, merge."""
    first = write(tmp_path / "first.json", _report(1, 2, ["a"]))
    second = write(tmp_path / "second.json", _report(2, 2, ["b"]))
    status, out, err = merge(capsys, first, second)
    assert status == 0, err
    assert "MSG-2   PASS         2" in out


def test_tx_spreads_one_run_over_two_popen_hosts(tmp_path, postgres_server):
    """pytest-xdist's --tx (one worker per host), as the README gives it, through the
    turnproof command: the matrix is the serial run's."""
    reports = []
    spread = ("--", "-p", "xdist", "--tx", "2*popen", "--dist", "load")
    for name, extra in (("serial", ()), ("tx", spread)):
        path = tmp_path / f"{name}.json"
        args = ("--pg-dsn", postgres_server.admin_dsn, "--json", str(path), *TX_SELECTION, *extra)
        process = start_turnproof_run(*args, cwd=tmp_path)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        reports.append(json.loads(path.read_text()))
    assert matrix(reports[1]) == matrix(reports[0])
    assert "one server per xdist worker, 2" in reports[1]["postgres"]


def test_the_suite_benchmark_starts(capsys):
    """`turnproof bench suite` is a benchmark, not a test: only that it is there."""
    with pytest.raises(SystemExit) as stopped:
        turnproof(["bench", "suite", "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: turnproof bench suite"), out
    assert "--requirement ID" in out, out


def test_the_plan_keeps_groups_whole_and_balances_their_cost():
    """Scenarios sharing a requirement or a function are one group; groups go largest
    first to the least loaded shard, so loads differ by at most one group's cost."""
    units = [
        Unit("m::race[2]", ("MSG-1",), "m::race", 5.0),
        Unit("m::race[8]", ("MSG-3",), "m::race", 5.0),  # joined to MSG-1 by its function
        Unit("m::shell", ("MSG-3",), "m::shell", 1.0),
        *(Unit(f"m::cheap{n}", (f"RUN-{n}",), f"m::cheap{n}", 1.0) for n in range(1, 12)),
    ]
    placement = plan(units, 2)
    assert plan(list(reversed(units)), 2) == placement, "the plan depends on collection order"
    assert placement["m::race[2]"] == placement["m::race[8]"] == placement["m::shell"]
    loads = [sum(u.cost for u in units if placement[u.scenario] == k) for k in (1, 2)]
    assert sorted(loads) == [11.0, 11.0]
