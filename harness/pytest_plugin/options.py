"""The plugin's options, and their reading: command line, then environment, then ini file.

Every value is checked here, when pytest configures, so a typo is one line and exit 2
before any server starts (checks needing a server or the adapter are the pre-flight's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.adapter_loading import DEFAULT_ADAPTER
from harness.errors import UsageError
from harness.postgres.resolver import PG_MODES
from harness.pytest_plugin.time_bounds import DEFAULT_OPERATION_TIMEOUT
from harness.race.schedule import parse_schedule
from harness.sharding import Shard, parse_shard

# option name -> (ini key, environment variable, help)
SETTINGS = {
    "adapter": (
        "turnproof_adapter",
        "TURNPROOF_ADAPTER",
        "implementation under test: 'package.module:attribute' or a name registered in the "
        f"'turnproof.adapters' entry-point group (default: {DEFAULT_ADAPTER})",
    ),
    "adapter_cmd": (
        "turnproof_adapter_cmd",
        "TURNPROOF_ADAPTER_CMD",
        "run the implementation as this driver command (JSON-lines driver protocol, "
        "docs/driver-protocol.md), e.g. 'node driver.js' or 'python -m harness.worker "
        "--adapter SPEC'; takes precedence over --adapter",
    ),
    "pg_dsn": (
        "turnproof_pg_dsn",
        "TURNPROOF_PG_DSN",
        "use this PostgreSQL server (needs CREATEDB); databases are created and dropped per test",
    ),
    "pg": (
        "turnproof_pg",
        "TURNPROOF_PG",
        f"where PostgreSQL comes from: {', '.join(PG_MODES)} (default auto: DSN if given, "
        "else Docker if its daemon answers, else the embedded server)",
    ),
    "operation_timeout": (
        "turnproof_operation_timeout",
        "TURNPROOF_OPERATION_TIMEOUT",
        "seconds an in-process adapter's install(), connect() or store operation may take "
        f"before its test fails naming it (default {DEFAULT_OPERATION_TIMEOUT:g}; drivers have "
        "their own bound)",
    ),
}


def add_options(parser: pytest.Parser) -> None:
    """Register the options and ini keys of the turnproof group."""
    group = parser.getgroup("turnproof", "turnproof conformance harness")
    for name, (ini, env, help_text) in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        group.addoption(flag, dest=f"turnproof_{name}", default=None, help=f"{help_text} [{env}]")
        parser.addini(ini, help=help_text, default=None)
    group.addoption(
        "--requirement",
        dest="turnproof_requirements",
        action="append",
        default=[],
        metavar="ID",
        help="run only the scenarios tagged with this requirement ID (repeatable, or "
        "comma-separated: --requirement MSG-4,RUN-1)",
    )
    group.addoption(
        "--turnproof-json",
        dest="turnproof_json",
        default=None,
        metavar="PATH",
        help="write the requirement matrix and verdict as JSON to PATH",
    )
    group.addoption(
        "--turnproof-html",
        dest="turnproof_html",
        default=None,
        metavar="PATH",
        help="write a self-contained HTML report (the matrix, every failure, race timelines) "
        "to PATH [TURNPROOF_HTML]",
    )
    parser.addini("turnproof_html", help="write the HTML report to this path", default=None)
    group.addoption(
        "--shard",
        dest="turnproof_shard",
        default=None,
        metavar="K/N",
        help="run share K of N of the selected scenarios (deterministic, balanced; a "
        "requirement's scenarios and a race's variants stay in one share); combine the "
        "shares' --turnproof-json reports with `turnproof merge`",
    )


def setting(config: pytest.Config, name: str) -> str | None:
    """The option's value: the command line wins, then the environment, then the ini file."""
    ini, env, _ = SETTINGS[name]
    return (
        config.getoption(f"turnproof_{name}") or os.environ.get(env) or config.getini(ini) or None
    )


def pg_mode(config: pytest.Config) -> str:
    mode = setting(config, "pg") or "auto"
    if mode not in PG_MODES:
        raise UsageError(f"--pg {mode!r}: choose one of {', '.join(PG_MODES)}")
    return mode


def operation_timeout(config: pytest.Config) -> float:
    given = setting(config, "operation_timeout")
    if given is None:
        return DEFAULT_OPERATION_TIMEOUT
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(
            f"--operation-timeout {given!r}: give a positive number of seconds (e.g. 30)"
        )
    return seconds


def wanted_requirements(config: pytest.Config) -> set[str]:
    """The IDs given to --requirement (repeatable, comma-separated); empty: no filter."""
    values = config.getoption("turnproof_requirements")
    return {i.strip() for v in values for i in v.split(",") if i.strip()}


def shard(config: pytest.Config) -> Shard | None:
    """The --shard K/N of this run, checked (None: the whole selection)."""
    given = config.getoption("turnproof_shard")
    return parse_shard(given) if given is not None else None


def json_path(config: pytest.Config) -> Path | None:
    given = config.getoption("turnproof_json")
    return Path(given) if given else None


def html_path(config: pytest.Config) -> Path | None:
    chosen = (
        config.getoption("turnproof_html")
        or os.environ.get("TURNPROOF_HTML")
        or config.getini("turnproof_html")
    )
    return Path(chosen) if chosen else None


def output_paths(config: pytest.Config) -> dict[str, Path]:
    """The files the run will write at its end, by the option that names them."""
    paths = {"--turnproof-json": json_path(config), "--turnproof-html": html_path(config)}
    junit = getattr(config.option, "xmlpath", None)
    paths["--junitxml"] = Path(junit) if junit else None
    return {option: path for option, path in paths.items() if path is not None}


def check_writable(option: str, path: Path) -> None:
    """Find an unwritable output path now, not after the whole suite has run."""
    path = path.expanduser()
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a directory; give a file path")
    parent = path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{option} {str(path)!r}: {str(existing)!r} is not a directory; give a path "
            "in a writable directory"
        )
    target = path if path.exists() else existing
    if not os.access(target, os.W_OK):
        raise UsageError(
            f"{option} {str(path)!r}: {str(target)!r} is not writable; give a path in a "
            "writable directory"
        )


def check_race_options(config: pytest.Config) -> None:
    """The race engine's options (harness.race.pytest_plugin), checked as usage errors."""
    sample = config.getoption("race_sample", None)
    if sample is not None and sample < 1:
        raise UsageError(
            f"--race-sample {sample}: give how many schedules of the choice tree to run, at least 1"
        )
    walks = config.getoption("race_walks", None)
    if walks is not None and walks < 0:
        raise UsageError(f"--race-walks {walks}: give how many PCT or random schedules, 0 or more")
    depth = config.getoption("race_pct_depth", None)
    if depth is not None and depth < 1:
        raise UsageError(f"--race-pct-depth {depth}: PCT's bug depth is at least 1")
    schedule = config.getoption("race_schedule", None)
    if schedule is not None:
        try:
            parse_schedule(schedule)
        except UsageError as exc:
            raise UsageError(f"--race-schedule {schedule!r}: {exc}") from None
