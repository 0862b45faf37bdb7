"""Is an actor waiting on another's lock? Asked of PostgreSQL, as its isolation tester does.

A statement that waits on a lock will not complete until someone else moves, so the
scheduler must let another actor run instead of waiting for it. An actor may hold
several connections (a pool): every backend carrying its application_name counts.
The engine asks only about actors that moved and neither parked nor finished, and
about those it already saw blocked.
"""

from __future__ import annotations

import psycopg

_BLOCKERS = """
SELECT a.application_name, coalesce(nullif(b.application_name, ''), 'pid ' || b.pid::text)
FROM pg_stat_activity AS a
CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity AS b ON b.pid = blocker.pid
WHERE a.application_name = ANY(%s) AND a.datname = %s
  AND a.wait_event_type = 'Lock'
ORDER BY 1, 2
"""


class BlockingMonitor:
    """A control connection that reports which sessions block given actors in one database
    (the interleaving's)."""

    def __init__(self, connection: psycopg.AsyncConnection, database: str) -> None:
        self._connection = connection
        self._database = database

    async def blocked(self, application_names: list[str]) -> dict[str, list[str]]:
        """For each of these actors that waits on a lock, the names of the sessions it waits
        on (any of its backends); actors that do not wait are absent."""
        cursor = await self._connection.execute(_BLOCKERS, (application_names, self._database))
        found: dict[str, list[str]] = {}
        for waiter, blocker in await cursor.fetchall():
            found.setdefault(waiter, []).append(blocker)
        return found

    async def blockers(self, application_name: str) -> list[str]:
        """Names of the sessions the actor's backends wait on; empty when none waits."""
        return (await self.blocked([application_name])).get(application_name, [])

    async def terminate(self, application_name: str) -> int:
        """Kill the actor's backends (a database-side fault); returns how many were ended."""
        cursor = await self._connection.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = %s",
            (application_name, self._database),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0
