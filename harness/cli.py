"""The `turnproof` command: run the conformance suite and print the requirement matrix.

`turnproof run` is pytest underneath (the suite is ordinary pytest modules),
with the harness's own exit codes: 0 conforming, 1 a requirement failed,
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import pytest

from harness.adapter_loading import DEFAULT_ADAPTER, AdapterLoadError, load_adapter
from harness.postgres.resolver import PG_MODES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_PYTEST_TO_CLI = {
    pytest.ExitCode.OK: EXIT_OK,
    pytest.ExitCode.TESTS_FAILED: EXIT_FAILED,
    pytest.ExitCode.USAGE_ERROR: EXIT_USAGE,
    # The plugin ends a run with code 2 on setup errors; a real Ctrl-C is seen by _RunWatcher.
    pytest.ExitCode.INTERRUPTED: EXIT_USAGE,
    pytest.ExitCode.NO_TESTS_COLLECTED: EXIT_USAGE,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnproof",
        description="Conformance and chaos harness for durable chat-turn stores on PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the conformance suite against an adapter and print the requirement matrix",
        description="Run the conformance suite (pytest --pyargs scenarios) against an adapter.",
    )
    run.add_argument(
        "--adapter",
        default=os.environ.get("TURNPROOF_ADAPTER", DEFAULT_ADAPTER),
        help="'package.module:attribute' or a registered adapter name "
        f"(default: {DEFAULT_ADAPTER}) [TURNPROOF_ADAPTER]",
    )
    run.add_argument(
        "--adapter-cmd",
        default=os.environ.get("TURNPROOF_ADAPTER_CMD"),
        metavar="CMD",
        help="run the implementation as this driver command (docs/driver-protocol.md), e.g. "
        "'node driver.js'; takes precedence over --adapter [TURNPROOF_ADAPTER_CMD]",
    )
    run.add_argument(
        "--pg",
        choices=PG_MODES,
        default=os.environ.get("TURNPROOF_PG", "auto"),
        help="where PostgreSQL comes from (default auto) [TURNPROOF_PG]",
    )
    run.add_argument(
        "--pg-dsn",
        default=os.environ.get("TURNPROOF_PG_DSN"),
        help="use this PostgreSQL server instead of starting one [TURNPROOF_PG_DSN]",
    )
    run.add_argument("--junitxml", type=Path, help="write JUnit XML results to this path")
    run.add_argument("--json", type=Path, help="write the matrix and verdict as JSON to this path")
    run.add_argument(
        "--requirement",
        action="append",
        default=[],
        metavar="ID",
        help="only the scenarios of this requirement ID (repeatable)",
    )
    run.add_argument("-k", dest="keyword", help="only scenarios matching this pytest -k expression")
    run.add_argument("-v", "--verbose", action="store_true", help="one line per scenario")
    run.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="after '--': extra arguments passed to pytest unchanged",
    )
    proxy = commands.add_parser(
        "proxy",
        add_help=False,
        help="the Toxiproxy-compatible proxy server: turnproof proxy serve [--help]",
    )
    proxy.add_argument("proxy_args", nargs=argparse.REMAINDER)
    bench = commands.add_parser(
        "bench", help="benchmarks (figures, not tests): " + ", ".join(BENCHMARKS)
    )
    bench.add_argument("benchmark", choices=sorted(BENCHMARKS))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's options")
    return parser


BENCHMARKS = {
    "driver": "harness.driver.benchmark",
    "proxy": "harness.proxy.benchmark",
    "race": "harness.race.benchmark",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run_suite(args)
    if args.command == "proxy":
        from harness.proxy.cli import main as proxy_main

        return proxy_main(args.proxy_args)
    if args.command == "bench":
        return importlib.import_module(BENCHMARKS[args.benchmark]).main(args.bench_args)
    raise AssertionError(f"unhandled command {args.command!r}")


def run_suite(args: argparse.Namespace) -> int:
    try:
        if args.adapter_cmd:
            from harness.driver.client import DriverAdapter

            DriverAdapter.from_command_line(args.adapter_cmd)
        else:
            load_adapter(args.adapter)
    except AdapterLoadError as exc:
        print(f"turnproof: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pytest_args = ["--pyargs", "scenarios", "-p", "no:cacheprovider", "--adapter", args.adapter]
    if args.adapter_cmd:
        pytest_args += ["--adapter-cmd", args.adapter_cmd]
    pytest_args += ["--pg", args.pg, "-r", "fEs"]
    # This process imported harness before pytest could mark it for assertion rewriting.
    pytest_args += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        pytest_args += ["-p", "anyio", "-p", "harness.pytest_plugin"]
    if args.pg_dsn:
        pytest_args += ["--pg-dsn", args.pg_dsn]
    if args.junitxml:
        pytest_args += ["--junitxml", str(args.junitxml)]
    if args.json:
        pytest_args += ["--turnproof-json", str(args.json)]
    for requirement_id in args.requirement:
        pytest_args += ["--requirement", requirement_id]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    pytest_args.append("-v" if args.verbose else "-q")
    pytest_args += [a for a in args.pytest_args if a != "--"]
    watcher = _RunWatcher()
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        code = pytest.main(pytest_args, plugins=[watcher])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if watcher.interrupted:
        return EXIT_INTERRUPTED
    if watcher.verdict_line:
        print(watcher.verdict_line)
    return _PYTEST_TO_CLI.get(code, EXIT_FAILED)


class _RunWatcher:
    """Sees the end of the pytest session: was it interrupted, what was the verdict."""

    def __init__(self) -> None:
        self.interrupted = False
        self.verdict_line = ""

    def pytest_keyboard_interrupt(self) -> None:
        self.interrupted = True

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from harness.pytest_plugin import conformance_report

        report = conformance_report(session.config)
        if report is not None:
            self.verdict_line = report.verdict.line


def _terminate_as_interrupt(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM takes the same clean path as Ctrl-C: servers stopped, databases dropped."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
