"""`turnproof run` end to end, as a user runs it: real subprocesses, the embedded server.

Each run boots its own embedded PostgreSQL, and each test proves that nothing
it started (server process, run directory) outlives it: on a pass, on a
failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from reference_impl.broken_variant import CHANNELS
from tests.driver_helpers import MARK_VARIABLE, marked
from tests.turnproof_command import start_turnproof_run

READY = re.compile(r"embedded PostgreSQL \S+ on \S+ ready in .* \(run dir (?P<run_dir>\S+)\)")


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def run_dir_of(output: str) -> Path:
    match = READY.search(output)
    assert match, f"no 'ready' line in the output:\n{output}"
    return Path(match["run_dir"])


def assert_nothing_left(run_dir: Path) -> None:
    assert not run_dir.exists(), f"{run_dir} outlived the run"
    servers = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True)
    assert str(run_dir) not in servers.stdout, "a PostgreSQL server of the run is still running"


def test_main_job_passes_every_covered_requirement(tmp_path):
    """Also in a project whose own pytest configuration the suite must not pick up, and
    leaving none of Hypothesis's storage behind in it.

    The project's one run of every scenario at the default race budget: it proves each
    scenario the broken variants, network faults and writer kills are judged by can pass
    (tests/test_broken_variants.py, tests/test_network_faults.py, tests/test_writer_kills.py),
    none skipped, and that no process the run started (killed writers included) outlives it.
    """
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --an-option-of-the-users-project\n")
    report_path = tmp_path / "report.json"
    mark = uuid.uuid4().hex
    process = start_turnproof_run(
        "--json", str(report_path), cwd=tmp_path, env={MARK_VARIABLE: mark}
    )
    code, output = finish(process)
    assert code == 0, output
    report = json.loads((tmp_path / "report.json").read_text())
    unpassed = {s["nodeid"]: s["outcome"] for s in report["scenarios"] if s["outcome"] != "pass"}
    assert unpassed == {}, output
    assert {s["channel"] for s in report["scenarios"]} == set(CHANNELS), output
    assert marked(mark) == set(), "a process of the run outlived it"
    statuses = {row["id"]: row["status"] for row in report["rows"]}
    families = ("MSG-", "USG-", "SWP-", "RUN-", "WS-")
    core = {i: s for i, s in statuses.items() if i.startswith(families)}
    assert {i for i, s in core.items() if s != "pass"} == set(), core
    assert report["verdict"]["ok"]
    assert report["verdict"]["conforming"]
    assert output.rstrip().splitlines()[-1].startswith("PASS: 'reference' passes")
    assert not (tmp_path / ".hypothesis").exists(), "Hypothesis storage left in the project"
    assert_nothing_left(run_dir_of(output))


def test_broken_adapter_fails_msg4_and_cleans_up(tmp_path):
    junit = tmp_path / "junit.xml"
    code, output = finish(
        start_turnproof_run(
            "--adapter",
            "reference_impl.broken:unguarded_step",
            "--requirement",
            "MSG-4",
            "--json",
            str(tmp_path / "report.json"),
            "--junitxml",
            str(junit),
            cwd=tmp_path,
        )
    )
    assert code == 1, output
    rows = {r["id"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}
    assert rows["MSG-4"]["status"] == "fail"
    assert rows["MSG-4"]["failing"], "the failing scenarios are named"
    assert re.search(r"^MSG-4\s+FAIL", output, re.MULTILINE), output
    assert 'name="requirements" value="MSG-4' in junit.read_text()
    assert_nothing_left(run_dir_of(output))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_run_says_incomplete_and_leaves_nothing(tmp_path, stop):
    report_path = tmp_path / "report.json"
    # The races, which come first, are left out, so the run is into the sequential
    # scenarios within seconds; RUN-1's sequential scenarios come later.
    process = start_turnproof_run("-v", "-k", "not races", "--json", str(report_path), cwd=tmp_path)
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:  # wait until a sequential scenario is under way
        seen.append(line)
        if "::" in line and "PASSED" in line:
            break
    else:
        pytest.fail("the run ended before any scenario passed:\n" + "".join(seen))
    process.send_signal(stop)
    code, rest = finish(process)
    output = "".join(seen) + rest
    assert code == 130, output
    report = json.loads(report_path.read_text())
    assert report["verdict"]["ok"] is False, report["verdict"]
    assert report["verdict"]["conforming"] is False, report["verdict"]
    assert report["verdict"]["line"].startswith("INCOMPLETE: the run was interrupted")
    assert report["interrupted"] is True
    unreached = {row["id"] for row in report["rows"] if row["status"] == "not reached"}
    assert "RUN-1" in unreached, "a selected requirement never reached says so"
    assert output.rstrip().splitlines()[-1].startswith("INCOMPLETE: the run was interrupted")
    assert_nothing_left(run_dir_of(output))
