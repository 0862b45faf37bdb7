"""The conformance suite through out-of-process drivers (`--adapter-cmd`): every scenario
function of every channel through the Node.js example driver, the sequential scenarios
through the Python worker around the reference. Also: a bad command is one line and exit
2, and no driver process outlives a run: finished, interrupted by Ctrl-C, or a harness
killed outright."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reference_impl.broken_variant import CHANNELS
from tests.driver_helpers import (
    BOUND,
    MARK_VARIABLE,
    alive,
    children,
    descendants,
    marked,
    node_driver_command,
)
from tests.turnproof_command import start_turnproof_run

PYTHON_WORKER = "python -m harness.worker --adapter reference"
CORE_FAMILIES = ("MSG-", "USG-", "SWP-", "RUN-", "WS-")


@pytest.fixture(scope="session")
def node_driver() -> str:
    return shlex.join(node_driver_command())


def assert_core_passes(run, command: str, *, unselected: frozenset[str] = frozenset()) -> None:
    """Every core requirement passed, except `unselected` ones, which had no scenario run."""
    output = run.result.stdout.str()
    assert run.result.ret == 0, output
    assert run.report is not None, output
    assert run.report["adapter_spec"] == command
    core = {r["id"]: r["status"] for r in run.report["rows"] if r["id"].startswith(CORE_FAMILIES)}
    assert core, output
    expected = {i: "pass" for i in core if i not in unselected}
    assert {i: s for i, s in core.items() if i not in unselected} == expected, output


# What these runs prove is the driver protocol under every scenario; the race engine's
# exploration is proven in process, so each race runs the first three schedules of its
# choice tree here (the fewest that make every race happen), not its budget.
DRIVER_RACE_BUDGET = ("--race-sample", "3", "--race-walks", "0")


WORKER_SUBSET = "not races and not network_faults and not writer_kills and not server_restart"
"""What the Python worker runs: every sequential scenario that talks to it alone. Each race
actor, killed writer or proxied replica is one more worker with its own connection; the
Node driver's run below takes those through the protocol, and every suite kills Python
workers in its kill scenarios."""

OUTSIDE_SUBSET = frozenset({"RUN-3"})
"""Core requirements with no scenario in WORKER_SUBSET."""


def test_sequential_core_scenarios_pass_through_the_python_worker(run_scenarios, monkeypatch):
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)  # inherited by the fork server and its workers
    run = run_scenarios("reference", "--adapter-cmd", PYTHON_WORKER, "-k", WORKER_SUBSET)
    assert_core_passes(run, PYTHON_WORKER, unselected=OUTSIDE_SUBSET)
    assert marked(mark) == set(), "a driver process outlived the run"


NODE_SUBSET = (
    "not (concurrent_begins_have_one_winner and not 2-begins) and not 4-writers"
    " and not (concurrent_assistant_shells_leave_one_row and 8-writers)"
)
"""What the Node driver runs: the whole suite but the larger sizes of the many-actor races.
Every scenario function, every channel and every operation still goes through it, each
race at two actors and one race at eight (ten drivers at once); each further size only
starts more drivers the same way, about a tenth of a second of CPU each. Every scenario
runs in full for the reference (tests/test_turnproof_run.py, the main job) and for the ORM
example (tests/test_example_adapters.py)."""


def test_core_suite_passes_through_the_node_driver(run_scenarios, node_driver):
    before = children()
    run = run_scenarios(
        "reference", "--adapter-cmd", node_driver, *DRIVER_RACE_BUDGET, "-k", NODE_SUBSET
    )
    assert_core_passes(run, node_driver)
    assert run.report["adapter_name"] == "node-pg-example"
    channels = {scenario["channel"] for scenario in run.report["scenarios"]}
    assert channels == set(CHANNELS), f"the subset lost a channel: {sorted(channels)}"
    assert children() - before == set(), "a driver process outlived the run"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("no-such-driver-binary --flag", "'no-such-driver-binary --flag': cannot start it"),
        (
            "python -m harness.worker --adapter nope",
            "exited with status 2 without a hello; its stderr ends: turnproof worker: "
            "--adapter 'nope': no adapter registered",
        ),
        ("node 'driver.js", "No closing quotation"),
    ],
)
def test_a_bad_adapter_cmd_is_one_line_and_exit_2(pytester: pytest.Pytester, command, says):
    result = pytester.runpytest_subprocess("--pyargs", "scenarios", "--adapter-cmd", command)
    assert result.ret == 2
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, result.stderr.str()
    assert says in lines[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def turnproof(*args: str, mark: str, cwd: Path) -> subprocess.Popen[str]:
    """`turnproof run`, marking every driver it starts (they inherit the environment)."""
    return start_turnproof_run(*args, cwd=cwd, env={MARK_VARIABLE: mark})


def assert_no_driver_left(mark: str) -> None:
    """Killed drivers may take a moment to vanish: wait for that, within a bound."""
    deadline = time.monotonic() + BOUND
    while left := marked(mark):
        if time.monotonic() > deadline:
            pytest.fail(f"driver processes outlived the run: {sorted(left)}")
        time.sleep(0.05)


def test_cli_bad_adapter_cmd_is_one_line_and_exit_2(tmp_path):
    process = turnproof("--adapter-cmd", "no-such-driver-binary", mark="unused", cwd=tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert output.splitlines() == [
        "turnproof: --adapter-cmd 'no-such-driver-binary': cannot start it: "
        "[Errno 2] No such file or directory: 'no-such-driver-binary'"
    ]


def test_cli_runs_through_a_driver_and_leaves_no_process(tmp_path, node_driver):
    mark = uuid.uuid4().hex
    process = turnproof(
        "--adapter-cmd", node_driver, "--requirement", "RUN-3", mark=mark, cwd=tmp_path
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert (
        output.rstrip().splitlines()[-1].startswith("PASS (partial selection): 'node-pg-example'")
    )
    assert_no_driver_left(mark)


INTERRUPTED_HOLDING_A_STORE = """
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_interrupted_while_holding_a_store(adapter, turn_dsn):
    await adapter.connect(turn_dsn)  # never closed: only the run's end can end its process
    raise KeyboardInterrupt
"""


def test_ctrl_c_mid_test_ends_the_drivers_of_unclosed_stores(
    pytester, postgres_server, monkeypatch
):
    """Ctrl-C skips a test's own clean-up; the end of the run still ends its drivers."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)  # inherited by the run and by its drivers
    pytester.makepyfile(test_interrupted=INTERRUPTED_HOLDING_A_STORE)
    result = pytester.runpytest_subprocess(
        "test_interrupted.py",
        "--adapter-cmd",
        PYTHON_WORKER,
        "--pg-dsn",
        postgres_server.admin_dsn,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert "KeyboardInterrupt" in result.stdout.str()
    assert marked(mark) == set(), "a driver outlived the interrupted run"


KILLED_HARNESS = """
import sys

import anyio

from harness.driver import DriverAdapter


async def main(dsn: str, command: list[str]) -> None:
    adapter = DriverAdapter(command, spares=2)
    stores = [await adapter.connect(dsn) for _ in range(2)]
    print(*(store.worker_pid for store in stores), flush=True)
    await anyio.sleep_forever()


anyio.run(main, sys.argv[1], sys.argv[2:])
"""


@pytest.mark.parametrize("driver", ["python-worker", "node-driver"])
def test_drivers_of_a_harness_killed_outright_end_by_themselves(tmp_path, postgres_server, driver):
    """SIGKILL leaves the harness no chance to clean up: its drivers see their input end."""
    command = shlex.split(PYTHON_WORKER) if driver == "python-worker" else node_driver_command()
    script = tmp_path / "harness_to_kill.py"
    script.write_text(KILLED_HARNESS)
    harness = subprocess.Popen(
        [sys.executable, str(script), postgres_server.admin_dsn, *command],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert harness.stdout is not None
    stores = {int(pid) for pid in harness.stdout.readline().split()}
    drivers = descendants(harness.pid)  # a fork server's workers are its children
    assert len(stores) == 2
    assert stores < drivers, "two stores and their spares are running"
    harness.kill()
    harness.wait()
    deadline = time.monotonic() + BOUND
    while left := {pid for pid in drivers if alive(pid)}:
        if time.monotonic() > deadline:
            pytest.fail(f"drivers of a killed harness still run: {sorted(left)}")
        time.sleep(0.05)
