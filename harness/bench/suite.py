"""The suite's cold wall time three ways, measured in one run (a benchmark, not a test).

    turnproof bench suite [--adapter SPEC] [--requirement ID ...] [--keep DIR]

Each way is a fresh `turnproof run` process on its own embedded PostgreSQL (cold: server
start, template install, every scenario), one after the other on this machine:

1. serial;
2. with `-n 2` (two pytest-xdist workers, a server each);
3. as two shards (`--shard 1/2`, then `--shard 2/2`) and `turnproof merge`: the time of
   one CI machine per shard is the slower shard, the sum is what one machine pays.

It prints seconds and ratios against serial, and checks that the three matrices and
verdicts agree (exit 1 when they do not, 2 when a run could not start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.conformance_report import merge_reports
from harness.errors import UsageError

_ROW_KEYS = ("id", "status", "scenarios", "passed", "failed", "skipped", "errors", "failing")


def _matrix(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = [tuple(row[k] for k in _ROW_KEYS) for row in report["rows"]]
    return [*rows, ("verdict", report["verdict"]["line"])]


def _timed_run(name: str, args: list[str], directory: Path) -> tuple[float, dict[str, Any]]:
    """One fresh `turnproof run`: its wall time and JSON report (output kept in NAME.log)."""
    report, log = directory / f"{name}.json", directory / f"{name}.log"
    command = [sys.executable, "-m", "harness.cli", "run", "--pg", "embedded", *args]
    started = time.perf_counter()
    with log.open("w") as output:
        code = subprocess.run(
            [*command, "--json", str(report)], stdout=output, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - started
    if code not in (0, 1) or not report.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{name}: turnproof run exited {code}: {tail[0]} (see {log})")
    print(f"  {name:<10} {seconds:7.1f} s  exit {code}", flush=True)
    return seconds, json.loads(report.read_text())


def measure(adapter: str, requirements: list[str], directory: Path) -> int:
    selection = ["--adapter", adapter, *(a for r in requirements for a in ("--requirement", r))]
    print(f"cold `turnproof run` on the embedded server, reports in {directory}:", flush=True)
    serial, serial_report = _timed_run("serial", selection, directory)
    parallel, parallel_report = _timed_run("n2", [*selection, "-n", "2"], directory)
    shard_runs = [
        _timed_run(f"shard{k}", [*selection, "--shard", f"{k}/2"], directory) for k in (1, 2)
    ]
    started = time.perf_counter()
    merged = merge_reports([(f"shard{k}", r) for k, (_, r) in enumerate(shard_runs, 1)])
    merging = time.perf_counter() - started
    shards = sum(s for s, _ in shard_runs) + merging
    slower = max(s for s, _ in shard_runs) + merging
    print()
    print(f"{'way':<34} {'seconds':>8} {'vs serial':>10}")
    for way, seconds in (
        ("serial", serial),
        ("-n 2", parallel),
        ("2 shards one after the other", shards),
        ("2 shards on 2 machines (slower)", slower),
    ):
        print(f"{way:<34} {seconds:8.1f} {seconds / serial:9.2f}x")
    scenarios = len(serial_report["scenarios"])
    print(f"scenarios: {scenarios}; shards ran {[len(r['scenarios']) for _, r in shard_runs]}")
    expected = _matrix(serial_report)
    agree = {"-n 2": _matrix(parallel_report), "merged shards": _matrix(merged.to_json())}
    differing = [way for way, matrix in agree.items() if matrix != expected]
    if differing:
        print(f"MATRICES DIFFER from the serial run's: {', '.join(differing)}")
        return 1
    print(f"the three matrices agree: {serial_report['verdict']['line']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnproof bench suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--adapter",
        default=os.environ.get("TURNPROOF_ADAPTER", "reference"),
        help="adapter spec (default: reference)",
    )
    parser.add_argument(
        "--requirement",
        action="append",
        default=[],
        metavar="ID",
        help="measure only this requirement's scenarios (repeatable; default: the whole suite)",
    )
    parser.add_argument("--keep", type=Path, help="write the reports and logs to this directory")
    args = parser.parse_args(argv)
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            return measure(args.adapter, args.requirement, args.keep)
        with tempfile.TemporaryDirectory(prefix="turnproof-bench-suite-") as directory:
            return measure(args.adapter, args.requirement, Path(directory))
    except (RuntimeError, UsageError) as exc:
        print(f"turnproof bench suite: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
