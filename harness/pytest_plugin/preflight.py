"""The pre-flight: everything the run needs, checked before the first scenario.

A set-up problem (PostgreSQL unreachable, a user without CREATEDB, no Docker daemon, an
adapter whose install() or connect() raises or hangs) would otherwise surface as one
failure per scenario, scored against the implementation. Here it is one line, exit 2.

Each step is time-bounded: the DSN connection by its connect timeout, the adapter's
install(), connect() and aclose() by the operation bound (time_bounds) or the driver's
own, the embedded server and the container by their start timeouts.
"""

from __future__ import annotations

from harness.errors import TurnproofError, UsageError
from harness.pytest_plugin.run import TurnproofRun


def prepare(run: TurnproofRun) -> None:
    """Reach PostgreSQL, install the adapter's schema once and connect once; any failure is
    a UsageError naming the step."""
    try:
        run.databases()
    except UsageError:
        raise
    except TurnproofError as exc:
        raise UsageError(f"pre-flight: {_one_line(exc)}") from exc
    except Exception as exc:
        raise UsageError(
            f"pre-flight: the adapter {run.adapter_option} failed before any scenario: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__
