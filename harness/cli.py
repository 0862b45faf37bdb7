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
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest

from harness.adapter_loading import DEFAULT_ADAPTER, AdapterLoadError, load_adapter
from harness.postgres.resolver import PG_MODES
from harness.proxy.cli import add_commands as add_proxy_commands
from harness.proxy.cli import run as run_proxy

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
HYPOTHESIS_STORAGE = "HYPOTHESIS_STORAGE_DIRECTORY"
_PYTEST_TO_CLI = {
    pytest.ExitCode.OK: EXIT_OK,
    pytest.ExitCode.TESTS_FAILED: EXIT_FAILED,
    pytest.ExitCode.USAGE_ERROR: EXIT_USAGE,
    # pytest's code 2 is also the plugin's usage exit (pytest.exit(..., 2)); a real Ctrl-C
    # is told apart by _RunWatcher, which sees the KeyboardInterrupt itself.
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
        "--html",
        type=Path,
        help="write a self-contained HTML report (matrix, failures, race timelines) to this path",
    )
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
        "-n",
        "--numprocesses",
        metavar="N",
        help="run the scenarios in N pytest-xdist workers (or 'auto'); each worker has its "
        "own PostgreSQL, the matrix is the same as a serial run's",
    )
    run.add_argument(
        "--shard",
        metavar="K/N",
        help="run share K of N of the selected scenarios (deterministic and balanced; a "
        "requirement's scenarios and a race's variants stay together); write each share's "
        "--json and combine them with `turnproof merge`",
    )
    run.add_argument(
        "--operation-timeout",
        type=float,
        metavar="SECONDS",
        help="bound on each in-process adapter call: install(), connect(), every operation "
        "(default 30) [TURNPROOF_OPERATION_TIMEOUT]",
    )
    run.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="after '--': extra arguments passed to pytest unchanged",
    )
    proxy = commands.add_parser(
        "proxy",
        help="the Toxiproxy-compatible proxy server: turnproof proxy serve [--help]",
        description="Toxiproxy-compatible proxy server of the harness.",
    )
    add_proxy_commands(proxy)
    merge = commands.add_parser(
        "merge",
        help="combine the JSON reports of `turnproof run --shard K/N` into the run's matrix",
        description="Combine the JSON reports of every shard of one run into the matrix, "
        "verdict and exit status the unsharded run would have given.",
    )
    merge.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="a shard's --json")
    merge.add_argument("--json", type=Path, help="write the merged matrix and verdict as JSON")
    merge.add_argument("--html", type=Path, help="write the merged self-contained HTML report")
    requirements = commands.add_parser(
        "requirements",
        help="the catalog: each clause, its scenarios and the broken variants that break it",
        description="Print every clause of the contract with the scenarios that check it "
        "and the broken variants that break it (read from collection; starts no PostgreSQL).",
    )
    requirements.add_argument("-v", "--verbose", action="store_true", help="name the scenarios")
    requirements.add_argument(
        "--write-docs",
        action="store_true",
        help="regenerate the requirement table in docs/contract.md instead of printing",
    )
    bench = commands.add_parser(
        "bench", help="benchmarks (figures, not tests): " + ", ".join(BENCHMARKS)
    )
    bench.add_argument("benchmark", choices=sorted(BENCHMARKS))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's options")
    return parser


BENCHMARKS = {
    "driver": "harness.bench.driver",
    "proxy": "harness.bench.proxy",
    "race": "harness.bench.race",
    "suite": "harness.bench.suite",
    "writer": "harness.bench.stream_writer",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run_suite(args)
    if args.command == "proxy":
        return run_proxy(args)
    if args.command == "merge":
        return merge_shards(args)
    if args.command == "requirements":
        from harness.requirement_table import main as requirements_main

        return requirements_main(verbose=args.verbose, write_docs=args.write_docs)
    if args.command == "bench":
        return importlib.import_module(BENCHMARKS[args.benchmark]).main(args.bench_args)
    raise AssertionError(f"unhandled command {args.command!r}")


def run_suite(args: argparse.Namespace) -> int:
    _put_working_directory_on_path()
    try:
        if args.adapter_cmd:
            from harness.driver.client import DriverAdapter

            DriverAdapter.from_command_line(args.adapter_cmd)
        else:
            load_adapter(args.adapter)
    except AdapterLoadError as exc:
        print(f"turnproof: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The suite's own settings only: the working directory's pytest configuration (addopts,
    # markers, warnings filters) belongs to the user's project, not to the conformance run.
    pytest_args = ["-c", os.devnull, "--rootdir", os.getcwd()]
    pytest_args += ["--pyargs", "scenarios", "-p", "no:cacheprovider", "--adapter", args.adapter]
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
    if args.html:
        pytest_args += ["--turnproof-html", str(args.html)]
    for requirement_id in args.requirement:
        pytest_args += ["--requirement", requirement_id]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.numprocesses:
        pytest_args += ["-p", "xdist", "-n", args.numprocesses]
    if args.operation_timeout is not None:
        pytest_args += ["--operation-timeout", str(args.operation_timeout)]
    if args.shard is not None:
        pytest_args += ["--shard", args.shard]
    pytest_args.append("-v" if args.verbose else "-q")
    pytest_args += [a for a in args.pytest_args if a != "--"]
    watcher = _RunWatcher()
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        with _hypothesis_storage_outside_the_working_directory():
            code = pytest.main(pytest_args, plugins=[watcher])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if watcher.verdict_line:
        print(watcher.verdict_line)
    if watcher.interrupted:
        return EXIT_INTERRUPTED
    return _PYTEST_TO_CLI.get(code, EXIT_FAILED)


@contextmanager
def _hypothesis_storage_outside_the_working_directory() -> Iterator[None]:
    """Hypothesis-driven scenarios keep their example database in a directory of the run's
    own, removed afterwards, instead of a `.hypothesis/` left in the user's project; a
    HYPOTHESIS_STORAGE_DIRECTORY the user set is respected. xdist workers inherit it."""
    if os.environ.get(HYPOTHESIS_STORAGE):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="turnproof-hypothesis-") as directory:
        os.environ[HYPOTHESIS_STORAGE] = directory
        try:
            yield
        finally:
            del os.environ[HYPOTHESIS_STORAGE]


def merge_shards(args: argparse.Namespace) -> int:
    """Print (and write) the matrix of the shards' reports; exit as the unsharded run."""
    from harness.conformance_report import exit_status, merge_reports, read_report
    from harness.errors import UsageError
    from harness.report.html import write_html

    try:
        named = [(str(path), read_report(path)) for path in args.reports]
        report = merge_reports(named)
    except UsageError as exc:
        print(f"turnproof merge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"turnproof merge: not a turnproof shard report (missing {exc})", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        report.write_json(args.json)
    if args.html:
        write_html(report.to_json(), args.html)
    print("\n".join(report.render()))
    return exit_status(report.verdict, report.interrupted)


def _put_working_directory_on_path() -> None:
    """Import adapters from the directory the command runs in, as `python -m pytest` does,
    here and in every process the run starts (xdist workers, Python worker processes)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([cwd, inherited] if inherited else [cwd])


class _RunWatcher:
    """Sees the end of the pytest session: was it interrupted, what was the verdict."""

    def __init__(self) -> None:
        self.interrupted = False
        self.verdict_line = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Before pytest's terminal reporter renders the interrupt: should that rendering
        raise (as it did on a frame interrupted where it has no line number, which the
        plugin's `interrupts` now repairs first), the hooks after it never run."""
        from harness.pytest_plugin.verdicts import is_user_interrupt

        self.interrupted = self.interrupted or is_user_interrupt(excinfo)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from harness.pytest_plugin import conformance_report

        report = conformance_report(session.config)
        if report is not None:
            self.verdict_line = report.verdict.line


def _terminate_as_interrupt(_signum: int, frame: FrameType | None) -> None:
    """SIGTERM takes the same clean path as Ctrl-C (servers stopped, databases dropped),
    through the SIGINT handler in place (harness.pytest_plugin.interrupts may hold it)."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored (a background job): stop all the same
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


if __name__ == "__main__":
    sys.exit(main())
