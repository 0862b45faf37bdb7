"""The catalog, the scenario tags, the broken variants and docs/contract.md agree.

Every clause has a scenario that checks it and a declared variant that breaks it; a tag or a
declaration naming something the catalog does not know fails; the table in docs/contract.md
is what `turnproof requirements --write-docs` generates.
"""

from __future__ import annotations

import pytest

from harness import cli, requirement_table
from harness.requirement_table import (
    CONTRACT_DOC,
    DOCS_BEGIN,
    DOCS_END,
    ClauseRow,
    Scenario,
    clause_rows,
    collected_scenarios,
    render_markdown,
    with_table,
)
from harness.requirements import (
    CAPABILITIES,
    CATALOG,
    CLAUSES,
    NOT_YET_COVERED,
    REQUIREMENTS,
)
from reference_impl.broken_variant import CHANNELS, declared_variants


@pytest.fixture(scope="module")
def scenarios() -> list[Scenario]:
    return collected_scenarios()


@pytest.fixture(scope="module")
def rows(scenarios: list[Scenario]) -> list[ClauseRow]:
    return clause_rows(scenarios)


def test_every_clause_has_a_scenario(rows):
    without = [r.clause.id for r in rows if not r.scenarios]
    assert without == [], f"clauses no scenario checks: {without}"


def test_every_clause_has_a_variant_that_breaks_it(rows):
    without = [r.clause.id for r in rows if not r.variants]
    assert without == [], f"clauses no declared broken variant breaks: {without}"


def test_every_variant_declares_known_clauses():
    unknown = {spec: v.breaks for spec, v in declared_variants() if set(v.breaks) - set(CLAUSES)}
    assert unknown == {}, f"variants declaring clauses the catalog does not have: {unknown}"


def test_every_tag_names_a_catalog_clause(scenarios):
    bare_or_unknown = {s.id: s.tags for s in scenarios if set(s.tags) - set(CLAUSES)}
    assert bare_or_unknown == {}, f"tags that are not clause IDs: {bare_or_unknown}"


def test_every_requirement_has_a_scenario_unless_listed_as_not_covered(scenarios):
    tagged = {CLAUSES[t].requirement_id for s in scenarios for t in s.tags if t in CLAUSES}
    assert {r.id for r in CATALOG} - tagged == set(NOT_YET_COVERED)


def test_the_contract_doc_carries_the_generated_table(rows):
    document = CONTRACT_DOC.read_text()
    assert DOCS_BEGIN in document
    assert DOCS_END in document
    assert document == with_table(document, render_markdown(rows)), (
        "docs/contract.md differs from the generated table: run `turnproof requirements "
        "--write-docs`"
    )


def test_a_missing_clause_row_is_reported():
    """The table names a clause without scenario or variant (the checks above can fail)."""
    (first, *_) = clause_rows(scenarios=[], variants=[])
    assert (first.scenarios, first.variants) == ((), ())
    assert "| none |" in render_markdown([first])


def test_every_channel_is_reached_by_some_scenario(scenarios):
    """Channels are derived from what scenarios use; each one a variant may declare occurs."""
    assert {s.channel for s in scenarios} == set(CHANNELS)


def test_the_command_prints_every_clause(rows, monkeypatch, capsys):
    monkeypatch.setattr(requirement_table, "clause_rows", lambda: rows)
    assert cli.main(["requirements", "-v"]) == 0
    printed = capsys.readouterr().out
    assert all(f"\n{c:<8} " in printed for c in CLAUSES)
    assert rows[0].scenarios[0].id in printed


def test_ids_are_unique_and_capabilities_known():
    assert len(REQUIREMENTS) == len(CATALOG)
    assert len(CLAUSES) == sum(len(r.clauses) for r in CATALOG)
    assert {r.capability for r in CATALOG} <= CAPABILITIES
    assert all(r.clauses for r in CATALOG)


def test_unknown_tag_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requirement("MSG-1z")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown clause ID(s) ['MSG-1z']" in result.stderr.str()


def test_a_bare_requirement_tag_is_a_usage_error(pytester):
    """A marker names the clauses a scenario checks, not a whole requirement."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requirement("MSG-1")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "names requirement(s) ['MSG-1'], not clauses" in result.stderr.str()
