"""The picture of a race scenario for the reports: its timeline and what was explored.

A failing race is drawn from the interleaving that failed (RaceFailure carries it); a
passing one from the last interleaving its exploration ran, so a reviewer can look at
what "passed" meant.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.errors import leaves
from harness.race.engine import RaceEngine
from harness.race.errors import RaceFailure
from harness.report.timeline import timeline_of


def race_picture(item: pytest.Item, call: pytest.CallInfo[None], *, rerun: str) -> dict[str, Any]:
    """`{"timeline": ..., "explored": ...}` for a race scenario's call phase; {} otherwise."""
    engine = getattr(item, "funcargs", {}).get("race_engine")
    if not isinstance(engine, RaceEngine):
        return {}
    explored = "; ".join(exploration.summary() for exploration in engine.explorations)
    failure = _race_failure(call)
    if failure is not None:
        finding = str(failure).splitlines()[0]
        timeline = timeline_of(failure.outcome, finding=finding, rerun=rerun)
        return {"timeline": timeline.to_json(), "explored": explored}
    last = next((e.last for e in reversed(engine.explorations) if e.last is not None), None)
    if last is None:
        return {"explored": explored}
    return {"timeline": timeline_of(last).to_json(), "explored": explored}


def _race_failure(call: pytest.CallInfo[None]) -> RaceFailure | None:
    if call.excinfo is None:
        return None
    return next((e for e in leaves(call.excinfo.value) if isinstance(e, RaceFailure)), None)
