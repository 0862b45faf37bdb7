"""The race engine's choosers and schedules, without a database: the choice tree is
complete and ordered, PCT is reproducible, schedules parse and races validate."""

from __future__ import annotations

import random
from collections.abc import Sequence
from math import factorial, prod

import pytest

from harness.errors import HarnessError, ImplementationFailure, UsageError
from harness.race import (
    Cut,
    InvalidInterleaving,
    InvalidRace,
    InvalidSchedule,
    Kill,
    Op,
    Proceed,
    Produced,
    Race,
    RaceFailure,
    Step,
    Terminate,
    given,
    parse_schedule,
)
from harness.race.schedule import format_schedule, schedule_problem
from harness.race.strategies import PCT, ChoiceTree, Chooser, Decision, Forced, Indexed, pct_bound


def simulate(steps: dict[str, int], chooser: Chooser) -> tuple[list[Decision], list[str]]:
    """Independent actors (nobody ever blocks): what the engine would offer and take."""
    left, decisions, taken, last = dict(steps), [], [], None
    while any(left.values()):
        enabled = [a for a in steps if left[a]]
        if last in enabled:
            enabled.insert(0, enabled.pop(enabled.index(last)))
        decision = Decision(len(decisions), tuple(enabled))
        entry = chooser.choose(decision)
        decisions.append(decision)
        taken.append(entry.actor)
        left[entry.actor] -= 1
        last = entry.actor
    return decisions, taken


def deviations(decisions: Sequence[Decision], taken: Sequence[str]) -> int:
    return sum(d.enabled[0] != a for d, a in zip(decisions, taken, strict=True))


def test_the_choice_tree_runs_every_schedule_once_fewest_deviations_first():
    steps = {"a": 2, "b": 2, "c": 2}
    tree, schedules, costs = ChoiceTree(), [], []
    while not tree.exhausted:
        decisions, taken = simulate(steps, tree.next_run())
        tree.expand(decisions)
        schedules.append(tuple(taken))
        costs.append(deviations(decisions, taken))
    multinomial = factorial(6) // prod(factorial(n) for n in steps.values())
    assert len(schedules) == len(set(schedules)) == multinomial == tree.leaves == 90
    assert costs == sorted(costs), "schedules with fewer deviations must all come first"
    assert costs[0] == 0
    assert schedules[0] == ("a", "a", "b", "b", "c", "c")


def test_a_partial_tree_reports_the_bound_it_covered():
    tree = ChoiceTree()
    for _ in range(10):
        decisions, _ = simulate({"a": 2, "b": 2, "c": 2}, tree.next_run())
        tree.expand(decisions)
    assert not tree.exhausted
    assert tree.covered == 1  # every schedule with at most one deviation ran in those 10


def test_pct_is_reproducible_by_seed_and_states_its_bound():
    steps = {"a": 3, "b": 3, "c": 3}

    def walk(seed: int) -> list[str]:
        return simulate(steps, PCT(random.Random(seed), list(steps), depth=2, steps=9))[1]

    assert walk(7) == walk(7)
    assert len({tuple(walk(seed)) for seed in range(20)}) > 1
    assert pct_bound(3, 9, 2, 10) == (
        "PCT depth 2: each run finds a depth-2 bug with probability >= 1/(3*9^1) = 0.037; "
        "10 runs >= 31.4%"
    )


def test_index_choices_map_onto_the_enabled_set_then_default():
    _decisions, taken = simulate({"a": 1, "b": 1}, Indexed((1,)))
    assert taken == ["b", "a"]
    assert simulate({"a": 1, "b": 1}, Indexed(()))[1] == ["a", "b"]


def test_a_forced_step_of_an_actor_that_cannot_move_names_the_step():
    decision = Decision(2, ("a",), blocked=("b",))
    forced = Forced((Step("a"), Step("a"), Step("b")))
    forced.choose(Decision(0, ("a", "b")))
    forced.choose(Decision(1, ("a", "b")))
    with pytest.raises(InvalidInterleaving, match=r"step 3 \(b, entry 3 of the schedule\): b is"):
        forced.choose(decision)
    assert Forced((Step("a"),)).choose(Decision(0, ("b", "a"))) == Step("a")
    assert Forced(()).choose(Decision(5, ("b", "a"))) == Step("b")


def test_proceed_moves_an_actor_while_it_can_then_the_schedule_goes_on():
    forced = Forced((Proceed("b"), Step("a")))
    assert forced.choose(Decision(0, ("a", "b"))) == Step("b")
    assert forced.choose(Decision(1, ("b", "a"))) == Step("b")
    assert forced.choose(Decision(2, ("a",), blocked=("b",))) == Step("a")
    assert forced.choose(Decision(3, ("a",), blocked=("b",))) == Step("a")


def test_schedules_parse_and_format_at_the_boundary_only():
    text = "finalize,step,proceed:a,cut:step,terminate:a,kill:a,kill-after-send:a"
    schedule = parse_schedule(text)
    assert schedule == (
        Step("finalize"),
        Step("step"),
        Proceed("a"),
        Cut("step"),
        Terminate("a"),
        Kill("a"),
        Kill("a", after_send=True),
    )
    assert format_schedule(schedule) == text
    with pytest.raises(InvalidSchedule, match=r"entry 2 'explode:a' is not an actor name"):
        parse_schedule("a,explode:a")
    assert issubclass(InvalidSchedule, UsageError)
    assert schedule_problem((Step("x"),), {"a"}, processes=False) == (
        "entry 1 (x) names no actor of the race (its actors: a)"
    )
    assert "set Race(processes=True)" in str(schedule_problem((Kill("a"),), {"a"}, processes=False))


async def nothing(*_args) -> dict[str, str]:
    return {}


def test_races_are_validated_when_they_are_built():
    with pytest.raises(InvalidRace, match=r"Op\('apend_step'\): no such operation"):
        Op("apend_step", message_id=given("m"))
    with pytest.raises(InvalidRace, match=r"unknown argument\(s\) text \(it takes message_id"):
        Op("append_step", message_id=given("m"), text="x")
    step = Op("append_step", message_id=given("m"), workspace_id="w", content="", parts=[])
    with pytest.raises(InvalidRace, match="actor name 'a b' must be a word"):
        Race("r", nothing, {"a b": [step]}, (Produced("p", bool),), nothing)
    with pytest.raises(InvalidRace, match="every actor needs at least one operation"):
        Race("r", nothing, {"a": []}, (Produced("p", bool),), nothing)


def test_the_engines_errors_sit_in_the_harness_error_tree():
    assert issubclass(InvalidRace, UsageError)
    assert issubclass(InvalidInterleaving, HarnessError)
    assert issubclass(RaceFailure, ImplementationFailure)
    assert issubclass(RaceFailure, AssertionError)
