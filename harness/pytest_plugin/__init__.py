"""The turnproof pytest plugin: options, the scenario fixtures, capability skips, the matrix.

Registered through the `pytest11` entry point, so `pytest --pyargs scenarios` works from
any directory. It stays inert in runs that collect no scenario: nothing is imported from
the adapter and no server starts unless a scenario is selected.

A small package, one job per module (pytest-xdist's layout is the model):

- `options`: the options and ini keys, read and checked (usage errors);
- `run`: the run state (`TurnproofRun`), registered as a plugin with public accessors;
- `hooks`: configure, selection, capability skips, the pre-flight (`preflight`);
- `verdicts`: reports folded into the matrix and verdict, serial or under pytest-xdist;
- `fixtures`: `adapter`, `turn_dsn`, `store`, `open_store`, `db_clock`;
- `time_bounds`: the bound on every in-process adapter call;
- `interrupts`: Ctrl-C held while a fixture is set up or torn down, raised right after,
  and never lost or raised twice;
- sub-plugins `network_faults` (`faulty_store`), `server_restart` (`restart_postgres`) and
  the race engine's own `harness.race.pytest_plugin` (`race_engine`).

Markers: `requirement(*ids)`, `capability(*names)`.
"""

from harness.pytest_plugin.run import (
    USAGE_ERROR,
    TurnproofRun,
    conformance_report,
    scenario_id,
    turnproof_run,
)

__all__ = ["USAGE_ERROR", "TurnproofRun", "conformance_report", "scenario_id", "turnproof_run"]

pytest_plugins = [
    "harness.pytest_plugin.hooks",
    "harness.pytest_plugin.verdicts",
    "harness.pytest_plugin.fixtures",
    "harness.pytest_plugin.interrupts",
    "harness.pytest_plugin.network_faults",
    "harness.pytest_plugin.server_restart",
    "harness.race.pytest_plugin",
]
