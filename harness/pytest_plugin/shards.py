"""`--shard K/N` in collection: keep this shard's share of the selection, deselect the rest.

Registered by the hooks' pytest_configure when `--shard` is given. Its
pytest_collection_modifyitems runs last, after `-k`, `-m` and `--requirement` chose the
selection, so every shard plans the same selection (harness.sharding). The shard's
summary (what the whole selection was, what this shard runs) goes into the JSON report;
under pytest-xdist the worker that collected hands it to the controller in `workeroutput`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.pytest_plugin.run import (
    is_xdist_worker,
    needed_capabilities,
    requirement_ids,
    scenario_id,
)
from harness.sharding import Shard, Unit, plan

SHARDS_PLUGIN_NAME = "turnproof-shards"
SHARD_OUTPUT_KEY = "turnproof-shard"
"""Key of the shard summary in pytest-xdist's `workeroutput`."""
SHARDED_OUT = pytest.StashKey[bool]()
"""Set on an item this shard deselected: not a narrower selection, another shard's share."""

_FIXTURE_COST = {"race_engine": 4.0, "restart_postgres": 3.0, "db_clock": 1.0, "faulty_store": 1.0}
"""What a scenario's fixtures add to its estimated cost (the base is 1): a race explores
many interleavings, a restart stops and starts the server, the clock waits out staleness."""
_PROCESS_COST = 2.0
"""Scenarios needing the `process` capability start and kill worker processes."""


def scenario_cost(item: pytest.Item) -> float:
    """Estimated cost of a scenario, from the fixtures and capabilities it uses."""
    fixtures = set(getattr(item, "fixturenames", ()))
    cost = 1.0 + sum(c for name, c in _FIXTURE_COST.items() if name in fixtures)
    if "process" in needed_capabilities(item):
        cost += _PROCESS_COST
    return cost


def _function(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    name = getattr(item, "originalname", item.name)
    return f"{module.__name__}::{name}" if module is not None else item.nodeid.split("[")[0]


class ShardSelection:
    """Deselects every scenario that is not in this shard, and remembers what it planned."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.summary: dict[str, Any] | None = None
        self.paths: set[Path] = set()
        """Files of the selection before sharding (the run's completeness is judged on them)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        units = [
            Unit(scenario_id(i), requirement_ids(i), _function(i), scenario_cost(i)) for i in items
        ]
        placement = plan(units, self.shard.total)
        keep, drop = [], []
        for item, unit in zip(items, units, strict=True):
            (keep if placement[unit.scenario] == self.shard.index else drop).append(item)
        self.paths = {Path(str(i.path)).resolve() for i in items}
        selected = [u for u in units if u.requirement_ids]
        mine = [u for u in selected if placement[u.scenario] == self.shard.index]
        self.summary = {
            "index": self.shard.index,
            "total": self.shard.total,
            "selected_scenarios": len(selected),
            "selected_requirements": sorted({r for u in selected for r in u.requirement_ids}),
            "scenarios": sorted(u.scenario for u in mine),
            "requirements": sorted({r for u in mine for r in u.requirement_ids}),
        }
        if is_xdist_worker(config):
            config.workeroutput[SHARD_OUTPUT_KEY] = self.summary  # type: ignore[attr-defined]
        if drop:
            for item in drop:
                item.stash[SHARDED_OUT] = True
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


def shard_selection(config: pytest.Config) -> ShardSelection | None:
    """The session's shard plugin, when the run is a shard."""
    plugin = config.pluginmanager.get_plugin(SHARDS_PLUGIN_NAME)
    return plugin if isinstance(plugin, ShardSelection) else None
