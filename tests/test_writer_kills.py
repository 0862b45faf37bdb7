"""The kill scenarios: each bug they exist for fails exactly the scenarios it must, and an
adapter without the process capability skips them. That the reference passes them through
the Python worker and no killed writer outlives the run, the main job proves
(tests/test_turnproof_run.py)."""

from __future__ import annotations

import pytest

MODULE = "scenarios.test_writer_kills"
KILLED_MID_OPERATION = "test_a_writer_killed_mid_operation_leaves_no_partial_write"


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
