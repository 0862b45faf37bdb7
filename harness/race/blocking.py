"""Is an actor waiting on another's lock? Asked of PostgreSQL, as its isolation tester does.

A statement that waits on a lock will not complete until someone else moves,
so the scheduler must let another actor run instead of waiting for it.
"""

from __future__ import annotations

import psycopg

_BLOCKERS = """
SELECT coalesce(nullif(b.application_name, ''), 'pid ' || b.pid::text)
FROM pg_stat_activity AS a
CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity AS b ON b.pid = blocker.pid
WHERE a.application_name = %s AND a.datname = current_database()
ORDER BY 1
"""


class BlockingMonitor:
    """A control connection that reports which sessions block a given actor."""

    def __init__(self, connection: psycopg.AsyncConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(cls, dsn: str) -> BlockingMonitor:
        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def aclose(self) -> None:
        await self._connection.close()

    async def blockers(self, application_name: str) -> list[str]:
        """Names of the sessions the actor's backend waits on; empty when it is not blocked."""
        cursor = await self._connection.execute(_BLOCKERS, (application_name,))
        return [row[0] for row in await cursor.fetchall()]

    async def terminate(self, application_name: str) -> int:
        """Kill the actor's backend (a database-side fault); returns how many were ended."""
        cursor = await self._connection.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (application_name,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0
