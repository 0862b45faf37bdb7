"""The kill scenarios: the reference passes them through the Python worker, each bug they
exist for fails exactly the scenarios it must, and no killed writer outlives its test."""

from __future__ import annotations

import uuid

import pytest

from tests.driver_helpers import MARK_VARIABLE, marked

MODULE = "scenarios.test_writer_kills"
KILLED_MID_OPERATION = "test_a_writer_killed_mid_operation_leaves_no_partial_write"


def test_reference_passes_every_kill_scenario(run_scenarios, monkeypatch):
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)  # inherited by every worker the run starts
    run = run_scenarios("reference", target=MODULE)
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    for requirement_id in ("DUR-1", "DUR-2", "DUR-3", "RUN-5", "RUN-7"):
        assert run.status(requirement_id) == "pass", run.result.stdout.str()
    assert "skipped" not in run.result.parseoutcomes(), run.result.stdout.str()
    assert marked(mark) == set(), "a worker outlived the run"


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        pytest.param(
            "steps_in_memory",
            {
                "test_what_returned_true_survives_the_writers_death",
                "test_a_write_survives_a_kill_right_after_it_returned[append_step]",
                "test_a_killed_writers_turn_stays_readable_until_swept",
            },
            id="steps_in_memory",
        ),
        pytest.param(
            "finalize_in_two_statements",
            {
                f"{KILLED_MID_OPERATION}[killed-holding-a-statement-finalize]",
                f"{KILLED_MID_OPERATION}[killed-after-sending-it-finalize]",
            },
            id="finalize_in_two_statements",
        ),
    ],
)
def test_each_bug_fails_exactly_the_scenarios_it_must(run_scenarios, variant, expected):
    run = run_scenarios(f"reference_impl.broken:{variant}", target=MODULE)
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED, run.result.stdout.str()
    assert run.errors() == 0, "a premise failed instead:\n" + run.result.stdout.str()
    assert run.failing() == expected, run.result.stdout.str()


NO_PROCESS_ADAPTER = """
from reference_impl import ReferenceAdapter

class WithoutProcess(ReferenceAdapter):
    capabilities = ReferenceAdapter.capabilities - {"process"}

reference = WithoutProcess(name="reference-in-process-only")
"""


def test_an_adapter_without_process_skips_the_kill_scenarios(pytester, run_scenarios):
    pytester.makepyfile(no_process=NO_PROCESS_ADAPTER)
    pytester.syspathinsert()
    run = run_scenarios("no_process:reference", target=MODULE)
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    assert run.result.parseoutcomes() == {"skipped": 9}, run.result.stdout.str()
