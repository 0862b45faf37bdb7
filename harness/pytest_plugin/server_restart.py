"""Crashing PostgreSQL itself: an immediate shutdown of the run's server, then a new start.

A pytest plugin, registered by `harness.pytest_plugin`. The contract's durability promises
are about what returned True; the hardest test of them is the server dying right
after: every connection is cut, nothing is checkpointed, and the next start replays
the WAL. Only the committed survives.

    await restart_postgres()       # every live connection dies; the server is back on
                                   # the same port with the same databases when it returns

Only the embedded server can be restarted (the harness owns its process). A run on
a server given by `--pg-dsn`, or in Docker, skips the scenarios that ask for it, with
the reason. The harness's own admin connection reconnects by itself; the scenario's
stores, clocks and probes opened before the restart are dead after it.

Fixture: `restart_postgres`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from harness.postgres.databases import DatabaseFactory
from harness.postgres.resolver import restartable
from harness.pytest_plugin.run import turnproof_run


@pytest.fixture
def restart_postgres(
    pytestconfig: pytest.Config, _turnproof_databases: DatabaseFactory
) -> Callable[[], Awaitable[None]]:
    """Restart the run's server: `await restart_postgres()` (immediate shutdown, then start).

    Returns once the server accepts connections again; raises HarnessError (with the
    server's last log lines) if it does not come back. Skips the test when the run's
    server is not the harness's own.
    """
    run = turnproof_run(pytestconfig)
    server = restartable(run.server)
    if server is None:
        pytest.skip(
            "restarting PostgreSQL needs the embedded server; this run uses "
            f"{run.postgres_description}"
        )

    fresh = run.fresh_databases()

    def settle_then_restart() -> None:
        fresh.settle()  # no clone or drop of the run's own may meet the shutdown
        server.restart()

    async def restart() -> None:
        # In a worker thread: the event loop keeps serving while the server is down
        # and recovering (the embedded server forks from a thread of its own anyway).
        await anyio.to_thread.run_sync(settle_then_restart)

    return restart
