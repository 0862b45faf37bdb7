"""Every set-up problem is one line and exit 2, before the first scenario runs.

Each case is run as a user runs it (a pytest subprocess, or the `turnproof` command) and
must end with one `turnproof:` line naming the problem, no traceback and no scenario
outcome: a wrong set-up never becomes a FAIL of the implementation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.postgres.databases import with_params
from harness.postgres.resolver import PostgresServer

BAD_ADAPTERS = """
import anyio
from reference_impl import adapter as reference
from reference_impl import schema  # noqa: F401  (SQLAlchemy: imported before install()'s 1 s)


class Wrapped:
    name = "bad"
    capabilities = reference.capabilities

    async def install(self, dsn):
        await reference.install(dsn)

    async def connect(self, dsn, *, clock=None):
        return await reference.connect(dsn, clock=clock)


class InstallRaises(Wrapped):
    async def install(self, dsn):
        raise RuntimeError("the schema script is broken")


class InstallHangs(Wrapped):
    async def install(self, dsn):
        await anyio.sleep_forever()


class ConnectRaises(Wrapped):
    async def connect(self, dsn, *, clock=None):
        raise ConnectionRefusedError("wrong port in the adapter's settings")


class ConnectHangs(Wrapped):
    async def connect(self, dsn, *, clock=None):
        await anyio.sleep_forever()


install_raises = InstallRaises()
install_hangs = InstallHangs()
connect_raises = ConnectRaises()
connect_hangs = ConnectHangs()
"""

TURNPROOF = str(Path(sys.executable).parent / "turnproof")
RUN_TIMEOUT = 120
"""A hang is a failure of this test, not a stalled test suite."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TURNPROOF_PG", "TURNPROOF_PG_DSN", "TURNPROOF_ADAPTER", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bad_adapters(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(bad_adapters=BAD_ADAPTERS)
    pytester.syspathinsert()


def run_suite(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--pyargs",
        "scenarios",
        "-p",
        "no:cacheprovider",
        "--requirement",
        "MSG-1",
        *args,
        timeout=RUN_TIMEOUT,
    )


def assert_one_usage_line(result: pytest.RunResult, expected: str) -> None:
    """Exit 2, the problem in one `turnproof:` line, no traceback, no scenario outcome."""
    output = result.stdout.str() + "\n" + result.stderr.str()
    assert result.ret == 2, output
    messages = {line.strip("! ").removeprefix("_pytest.outcomes.") for line in output.splitlines()}
    messages = {m for m in messages if "turnproof:" in m}
    assert len(messages) == 1, f"expected one 'turnproof:' line, found {messages}:\n{output}"
    (message,) = messages
    assert expected in message, f"expected {expected!r} in the line {message!r}"
    assert "Traceback" not in output, output
    ran = re.search(r"^=+ .*\b\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s", output, re.M)
    assert ran is None, f"scenarios ran ({ran and ran[0]}):\n{output}"


@pytest.mark.parametrize(
    ("adapter", "expected"),
    [
        (
            "bad_adapters:install_raises",
            "install() failed on a fresh database: RuntimeError: the schema script is broken",
        ),
        ("bad_adapters:install_hangs", "install() did not return within 1 s"),
        (
            "bad_adapters:connect_raises",
            "connect() to a freshly installed database raised ConnectionRefusedError: wrong port",
        ),
        ("bad_adapters:connect_hangs", "connect() did not return within 1 s"),
    ],
)
def test_adapter_that_cannot_start_is_one_line(
    pytester, postgres_server, bad_adapters, adapter, expected
):
    result = run_suite(
        pytester,
        "--adapter",
        adapter,
        "--operation-timeout",
        "1",
        "--pg-dsn",
        postgres_server.admin_dsn,
    )
    assert_one_usage_line(result, expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--pg-dsn", "postgresql://turnproof@127.0.0.1:1/nothing"), "--pg-dsn: cannot connect"),
        (("--pg-dsn", "host=127.0.0.1 port=not-a-port"), "--pg-dsn: cannot connect"),
        (("--pg", "dsn"), "--pg=dsn needs --pg-dsn"),
        (("--pg", "cloud"), "--pg 'cloud': choose one of auto, embedded, docker, dsn"),
        (("--operation-timeout", "-3"), "--operation-timeout '-3': give a positive number"),
        (("--race-sample", "0"), "--race-sample 0: give how many schedules"),
        (("--race-schedule", "finalize,,step"), "--race-schedule 'finalize,,step'"),
        (("--race-schedule", "explode:step"), "--race-schedule 'explode:step'"),
    ],
)
def test_bad_option_is_one_line(pytester, args, expected):
    assert_one_usage_line(run_suite(pytester, *args), expected)


def test_docker_mode_without_a_daemon_is_one_line(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    result = run_suite(pytester, "--pg", "docker")
    assert_one_usage_line(result, "--pg=docker: no Docker daemon answers")


@pytest.fixture
def dsn_without_createdb(postgres_server: PostgresServer) -> Iterator[str]:
    """A DSN of a user that may log in but not create databases."""
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS turnproof_no_createdb")
        conn.execute("CREATE ROLE turnproof_no_createdb LOGIN NOCREATEDB PASSWORD 'x'")
    yield with_params(postgres_server.admin_dsn, user="turnproof_no_createdb", password="x")
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS turnproof_no_createdb")


def test_dsn_user_without_createdb_is_one_line(pytester, dsn_without_createdb):
    result = run_suite(pytester, "--pg-dsn", dsn_without_createdb)
    assert_one_usage_line(
        result, "user 'turnproof_no_createdb' may not create databases, and the run needs one"
    )


@pytest.mark.parametrize("option", ["--turnproof-json", "--junitxml"])
def test_unwritable_output_path_is_found_before_the_run(pytester, option, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_suite(pytester, option, str(blocker / "report.out"))
    assert_one_usage_line(result, f"{option} '{blocker / 'report.out'}'")


def test_keyword_matching_no_scenario_points_to_requirement(pytester, postgres_server):
    result = pytester.runpytest_subprocess(
        "--pyargs", "scenarios", "-p", "no:cacheprovider", "-k", "MSG", timeout=RUN_TIMEOUT
    )
    assert_one_usage_line(result, "use --requirement ID (e.g. --requirement MSG-4)")


def test_schedule_naming_no_actor_of_the_race_stops_the_run_with_exit_2(pytester):
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "scenarios.test_message_races",
        "-p",
        "no:cacheprovider",
        "-k",
        "test_late_step_never_clobbers_a_finalized_row",
        "--race-schedule",
        "nobody,nobody",
        timeout=RUN_TIMEOUT,
    )
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 2, output
    assert re.search(r"turnproof: .*names no actor of the race", output), output
    assert "Traceback" not in output, output
    assert "turnproof requirement matrix" not in output, "a usage error gives no verdict"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--adapter", "bad_adapters:install_raises"), "the schema script is broken"),
        (("--pg-dsn", "postgresql://turnproof@127.0.0.1:1/nothing"), "--pg-dsn: cannot connect"),
        (("--pg", "dsn"), "--pg=dsn needs --pg-dsn"),
    ],
    ids=["install-raises", "unreachable-dsn", "dsn-mode-without-dsn"],
)
def test_turnproof_command_exits_2_not_130(tmp_path, postgres_server, args, expected):
    """Run as installed (the console script, not python -m) from the adapter's own folder."""
    (tmp_path / "bad_adapters.py").write_text(BAD_ADAPTERS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNPROOF_")}
    if "--pg-dsn" not in args and "--pg" not in args:
        args = (*args, "--pg-dsn", postgres_server.admin_dsn)
    result = subprocess.run(
        [TURNPROOF, "run", "--requirement", "MSG-1", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert expected in output, output
    assert "Traceback" not in output, output
