"""The catalog, the scenario tags and the not-yet-covered list agree with each other."""

from __future__ import annotations

import pytest

from harness.requirements import CATALOG, NOT_YET_COVERED, REQUIREMENTS


def _tagged_ids(pytester: pytest.Pytester) -> dict[str, list[str]]:
    items, _ = pytester.inline_genitems("--pyargs", "scenarios", "-p", "no:cacheprovider")
    tagged: dict[str, list[str]] = {}
    for item in items:
        for mark in item.iter_markers("requirement"):
            for requirement_id in mark.args:
                tagged.setdefault(requirement_id, []).append(item.nodeid)
    return tagged


def test_every_requirement_has_a_scenario_unless_listed_as_not_covered(pytester):
    tagged = _tagged_ids(pytester)
    without_scenario = {r.id for r in CATALOG} - set(tagged)
    assert without_scenario == set(NOT_YET_COVERED)


def test_every_tag_names_a_catalog_requirement(pytester):
    assert set(_tagged_ids(pytester)) <= set(REQUIREMENTS)


def test_ids_are_unique_and_capabilities_known():
    from harness.requirements import CAPABILITIES

    assert len(REQUIREMENTS) == len(CATALOG)
    assert {r.capability for r in CATALOG} <= CAPABILITIES


def test_unknown_tag_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requirement("MSG-99")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown requirement ID(s) ['MSG-99']" in result.stderr.str()
