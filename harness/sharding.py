"""Shards: split one selection of scenarios into N deterministic, balanced shares.

`--shard K/N` runs share K. Every process that plans the same selection gets the same
plan (no randomness, no clock), so N machines each running one shard together run every
selected scenario exactly once, and `turnproof merge` folds their reports back into the
matrix of the unsharded run.

Scenarios that must be judged together are placed together:

- every scenario of a requirement (a requirement's row is then whole in one shard's
  report; a scenario tagged with two requirements joins both into one group);
- every parametrization of one scenario function (a race with its 2-, 4- and 8-writer
  variants stays in one shard).

Groups are then placed largest cost first on the least loaded shard (longest processing
time first). The cost of a scenario is estimated by the caller from what the scenario
uses (its fixtures and capabilities), never from a table of scenario names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import UsageError

_SHARD = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    """Share `index` (1-based) of `total`."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> Shard:
    """`K/N` with 1 <= K <= N; anything else is a usage error."""
    match = _SHARD.fullmatch(text.strip())
    if match is not None:
        shard = Shard(int(match[1]), int(match[2]))
        if 1 <= shard.index <= shard.total:
            return shard
    raise UsageError(
        f"--shard {text!r}: give K/N, share K of N with 1 <= K <= N (e.g. --shard 1/2)"
    )


@dataclass(frozen=True)
class Unit:
    """One selected scenario as the planner sees it."""

    scenario: str
    """Its id (`package.module::test[param]`), unique in the selection."""
    requirement_ids: tuple[str, ...]
    function: str
    """The scenario function (`package.module::test`): its parametrizations stay together."""
    cost: float


def plan(units: Sequence[Unit], total: int) -> dict[str, int]:
    """The shard (1-based) of every unit's scenario, `total` shards."""
    parent = list(range(len(units)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[str, int] = {}
    for i, unit in enumerate(units):
        for key in (f"function {unit.function}", *(f"id {r}" for r in unit.requirement_ids)):
            j = first_of.setdefault(key, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[Unit]] = {}
    for i, unit in enumerate(units):
        groups.setdefault(root(i), []).append(unit)
    ordered = sorted(
        groups.values(),
        key=lambda g: (-sum(u.cost for u in g), min(u.scenario for u in g)),
    )
    loads = [0.0] * total
    placement: dict[str, int] = {}
    for group in ordered:
        target = min(range(total), key=lambda s: (loads[s], s))
        loads[target] += sum(u.cost for u in group)
        placement.update((u.scenario, target + 1) for u in group)
    return placement
