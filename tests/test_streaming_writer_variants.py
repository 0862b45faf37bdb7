"""Every broken writer variant fails exactly its CW requirement; the reference passes all.

Proved through the public --adapter option against the whole CW selection, so a variant
failing a second ID (a scenario catching the wrong bug) fails here too.
"""

from __future__ import annotations

import pytest

from reference_impl.broken_writer import VARIANTS

CW_IDS = [f"CW-{n}" for n in range(1, 8)]
CW_SELECTION = ("--requirement", ",".join(CW_IDS))


@pytest.mark.parametrize(("variant", "requirement_id"), sorted(VARIANTS.items()))
def test_variant_fails_exactly_its_requirement(run_scenarios, variant, requirement_id):
    run = run_scenarios(f"reference_impl.broken_writer:{variant}", *CW_SELECTION)
    failed = {i for i in CW_IDS if run.status(i) == "fail"}
    assert failed == {requirement_id}, run.result.stdout.str()
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED


def test_reference_passes_every_cw_requirement(run_scenarios):
    run = run_scenarios("reference", *CW_SELECTION)
    assert {i: run.status(i) for i in CW_IDS} == dict.fromkeys(CW_IDS, "pass"), (
        run.result.stdout.str()
    )
    assert run.result.ret == pytest.ExitCode.OK
