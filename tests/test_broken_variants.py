"""Every broken variant of the reference fails the requirement it breaks.

Proved through the public --adapter option, the way a user would find the bug.
The reference passing the same selection proves each scenario can also pass,
and the race-only bugs passing every sequential scenario proves that only the
forced races catch them.
"""

from __future__ import annotations

import pytest

VARIANTS = [
    ("unguarded_step", "MSG-4"),
    ("read_then_write_step", "MSG-4"),
    ("check_then_insert_persist", "MSG-1"),
    ("check_then_insert_persist", "MSG-3"),
    ("usage_last_writer_wins", "USG-1"),
    ("sweep_without_staleness", "SWP-2"),
    ("sweep_touches_legacy", "SWP-2"),
    ("check_then_act_begin", "RUN-1"),
    ("begin_swallows_conflict", "RUN-1"),
    ("begin_blames_everything", "RUN-2"),
    ("begin_skips_claimed_chat", "RUN-3"),
    ("steps_in_memory", "DUR-1"),
    ("finalize_in_two_statements", "DUR-2"),
    ("read_then_write_in_transaction", "MSG-4"),
    ("check_then_insert_repeatable_read", "MSG-1"),
    ("check_then_insert_repeatable_read", "MSG-3"),
    ("check_then_insert_serializable", "MSG-1"),
    ("check_then_insert_serializable", "MSG-3"),
]

RACE_ONLY = [
    ("read_then_write_step", "MSG-4", "scenarios.test_messages"),
    ("check_then_insert_persist", "MSG-1", "scenarios.test_messages"),
    ("check_then_act_begin", "RUN-1", "scenarios.test_runs"),
    ("read_then_write_in_transaction", "MSG-4", "scenarios.test_messages"),
    ("check_then_insert_repeatable_read", "MSG-1", "scenarios.test_messages"),
    ("check_then_insert_serializable", "MSG-3", "scenarios.test_messages"),
]


@pytest.mark.parametrize(("variant", "requirement_id"), VARIANTS)
def test_variant_fails_its_requirement(run_scenarios, variant, requirement_id):
    run = run_scenarios(f"reference_impl.broken:{variant}", "--requirement", requirement_id)
    assert run.status(requirement_id) == "fail", run.result.stdout.str()
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED
    assert not run.report["verdict"]["ok"]


@pytest.mark.parametrize("requirement_id", sorted({r for _, r in VARIANTS}))
def test_reference_passes_the_same_selection(run_scenarios, requirement_id):
    run = run_scenarios("reference", "--requirement", requirement_id)
    assert run.status(requirement_id) == "pass", run.result.stdout.str()
    assert run.result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize(("variant", "requirement_id", "sequential_module"), RACE_ONLY)
def test_race_only_bug_passes_every_sequential_scenario(
    run_scenarios, variant, requirement_id, sequential_module
):
    run = run_scenarios(
        f"reference_impl.broken:{variant}",
        "--requirement",
        requirement_id,
        target=sequential_module,
    )
    assert run.status(requirement_id) == "pass", run.result.stdout.str()


def test_a_server_crash_catches_steps_kept_in_memory(pytester, monkeypatch):
    """The restart scenarios need a server the run owns, so this run starts its own."""
    monkeypatch.delenv("TURNPROOF_PG_DSN", raising=False)
    result = pytester.runpytest_inprocess(
        "--pyargs",
        "scenarios.test_server_restart",
        "-p",
        "no:cacheprovider",
        "--adapter",
        "reference_impl.broken:steps_in_memory",
        "--pg",
        "embedded",
        "--requirement",
        "DUR-1",
    )
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
