"""Under pytest-xdist the controller prints the one merged matrix and writes the JSON once,
equal to a serial run's; each worker has its own databases (and its own PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest

RUN_TIMEOUT = 300
BROKEN = "reference_impl.broken:read_then_write_step"


def suite(pytester: pytest.Pytester, name: str, *args: str) -> tuple[pytest.RunResult, Any]:
    report = pytester.path / f"{name}.json"
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "scenarios",
        "-p",
        "no:cacheprovider",
        "--turnproof-json",
        str(report),
        *args,
        timeout=RUN_TIMEOUT,
    )
    assert report.exists(), result.stdout.str() + result.stderr.str()
    return result, json.loads(report.read_text())


def matrix(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("id", "status", "scenarios", "passed", "failed", "skipped", "errors", "failing")
    return [tuple(row[k] for k in keys) for row in report["rows"]]


def test_two_workers_report_the_serial_verdict_once(pytester):
    """The broken read-then-write step fails only in its race: the merged report says so
    (an xdist run once wrote a worker's PASS for it)."""
    selection = ("--requirement", "MSG-4", "--adapter", BROKEN)
    serial, serial_report = suite(pytester, "serial", *selection)
    parallel, parallel_report = suite(pytester, "parallel", *selection, "-p", "xdist", "-n", "2")
    assert serial.ret == parallel.ret == 1, parallel.stdout.str()
    assert matrix(parallel_report) == matrix(serial_report)
    assert parallel_report["verdict"] == serial_report["verdict"]
    assert parallel_report["verdict"]["line"] == (
        "FAIL: 'broken-read-then-write-step' breaks MSG-4"
    )
    assert [f["scenario"] for f in parallel_report["failures"]] == [
        "scenarios.test_message_races::test_late_step_never_clobbers_a_finalized_row"
    ]
    assert parallel_report["failures"][0]["rerun"], "the race's rerun line reaches the JSON"
    output = parallel.stdout.str()
    assert output.count("turnproof requirement matrix") == 1, output
    assert output.count("FAIL: 'broken-read-then-write-step' breaks MSG-4") == 1, output


def test_a_workers_usage_error_is_one_line_and_exit_2(pytester):
    pytester.makepyfile(
        broken_install="""
from reference_impl import adapter as reference


class BrokenInstall:
    name = "broken-install"
    capabilities = reference.capabilities

    async def install(self, dsn):
        raise RuntimeError("the schema script is broken")

    async def connect(self, dsn, *, clock=None):
        return await reference.connect(dsn, clock=clock)


adapter = BrokenInstall()
"""
    )
    pytester.syspathinsert()
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "scenarios",
        "-p",
        "no:cacheprovider",
        "-p",
        "xdist",
        "-n",
        "2",
        "--requirement",
        "MSG-1",
        "--adapter",
        "broken_install:adapter",
        "--turnproof-json",
        str(report),
        timeout=RUN_TIMEOUT,
    )
    output = result.stdout.str()
    assert result.ret == 2, output
    lines = [line for line in output.splitlines() if "the schema script is broken" in line]
    assert len(lines) == 1, output
    assert not report.exists(), "a run stopped by a usage error writes no verdict"
