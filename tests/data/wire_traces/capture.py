"""Record the bytes real PostgreSQL clients exchange with a server, as `*.trace` files.

    .venv/bin/python tests/data/wire_traces/capture.py   # starts an embedded PostgreSQL

Each client runs the same small workload (see WORKLOAD_SQL and the per-client code)
through a loopback relay that writes down every chunk in the order it passed: a line
`C<n> <bytes>` for client to server on the n-th connection, `S<n> <bytes>` for server to
client, the bytes as a Python bytes literal so the SQL stays readable. The statement
tracker's tests replay them without a server (tests/proxy/test_statement_tracker.py).
The Node clients need `examples/node-driver/install.sh` and
`examples/postgres-js-driver/install.sh` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import asyncpg
import psycopg

from harness.postgres.resolver import start_postgres

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TABLE = "wire_trace"


class Relay:
    """A loopback TCP relay to the server that records each chunk with its direction."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.chunks: list[tuple[str, int, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._pipe("C", conn, client_r, server_w), self._pipe("S", conn, server_r, client_w)
        )

    async def _pipe(
        self, side: str, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while data := await reader.read(65536):
            self.chunks.append((side, conn, data))
            writer.write(data)
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def dsn_parts(dsn: str) -> dict[str, str]:
    return psycopg.conninfo.conninfo_to_dict(dsn)


async def psycopg_workload(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SET lock_timeout = '5s'")
        for i in (1, 2):
            await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", [i, "psycopg"])
        await conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ["again", 1], prepare=True)
        await conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ["twice", 2], prepare=True)
        await conn.execute("SELECT 1; SELECT 2")
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", [1, "duplicate"])
        async with conn.transaction():
            await conn.execute(f"SELECT v FROM {TABLE} WHERE id = %s FOR UPDATE", [1])
        async with conn.cursor() as cur, cur.copy(f"COPY {TABLE} FROM STDIN") as copy:
            await copy.write_row([3, "copied"])


async def psycopg_pipeline_workload(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with conn.pipeline():
            for i in (1, 2, 3):
                await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", [i, "pipeline"])
        async with conn.pipeline() as pipeline:
            await conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ["a", 1])
            await pipeline.sync()
            await conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ["b", 2])


async def asyncpg_workload(dsn: str) -> None:
    params = dsn_parts(dsn)
    conn = await asyncpg.connect(
        host=params["host"],
        port=int(params["port"]),
        user=params.get("user"),
        database=params.get("dbname"),
        server_settings={"application_name": "wire-trace"},
    )
    try:
        for i in (1, 2):
            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", i, "asyncpg")
        await conn.fetchrow(f"SELECT v FROM {TABLE} WHERE id = $1", 1)
        await conn.fetchrow(f"SELECT v FROM {TABLE} WHERE id = $1", 2)
        with contextlib.suppress(asyncpg.UniqueViolationError):
            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", 1, "duplicate")
        async with conn.transaction():
            await conn.execute(f"UPDATE {TABLE} SET v = $1 WHERE id = $2", "tx", 1)
        await conn.executemany(f"INSERT INTO {TABLE} VALUES ($1, $2)", [(3, "a"), (4, "b")])
        await conn.execute("SELECT 1; SELECT 2")
    finally:
        await conn.close()


NODE_PG = """
const pg = require('pg')
;(async () => {
  const c = new pg.Client(process.env.TRACE_URL)
  await c.connect()
  for (const i of [1, 2]) await c.query('INSERT INTO wire_trace VALUES ($1, $2)', [i, 'pg'])
  const upd = 'UPDATE wire_trace SET v = $1 WHERE id = $2'
  await c.query({ name: 'upd', text: upd, values: ['a', 1] })
  await c.query({ name: 'upd', text: upd, values: ['b', 2] })
  await c.query('SELECT 1; SELECT 2')
  try { await c.query('INSERT INTO wire_trace VALUES ($1, $2)', [1, 'dup']) } catch (e) {}
  await c.query('BEGIN')
  await c.query('SELECT v FROM wire_trace WHERE id = $1 FOR UPDATE', [1])
  await c.query('COMMIT')
  await c.end()
})().catch((e) => { console.error(e); process.exit(1) })
"""

POSTGRES_JS = """
const postgres = require('postgres')
;(async () => {
  const sql = postgres(process.env.TRACE_URL, { max: 2, onnotice: () => {} })
  await sql.unsafe('SELECT 1=1')
  const ins = 'INSERT INTO wire_trace VALUES ($1, $2)'
  const upd = 'UPDATE wire_trace SET v = $1 WHERE id = $2'
  const prepared = { prepare: true }
  for (const i of [1, 2]) await sql.unsafe(ins, [i, 'pgjs'], prepared)
  await sql.unsafe(upd, ['a', 1], prepared)
  await sql.unsafe(upd, ['b', 2], prepared)
  try { await sql.unsafe(ins, [1, 'dup'], prepared) } catch (e) {}
  const lock = 'SELECT v FROM wire_trace WHERE id = $1 FOR UPDATE'
  await sql.begin(async (tx) => { await tx.unsafe(lock, [1]) })
  await Promise.all([1, 2, 3].map((i) => sql.unsafe('SELECT $1::int AS n', [i])))
  await sql.end({ timeout: 5 })
})().catch((e) => { console.error(e); process.exit(1) })
"""


def node_workload(script: str, modules: Path) -> Callable[[str], Awaitable[None]]:
    async def run(dsn: str) -> None:
        p = dsn_parts(dsn)
        user, database = p.get("user", "postgres"), p.get("dbname", "postgres")
        url = f"postgres://{user}@{p['host']}:{p['port']}/{database}?application_name=wire-trace"
        env = {**os.environ, "TRACE_URL": url, "NODE_PATH": str(modules)}
        proc = await asyncio.create_subprocess_exec("node", "-e", script, env=env)
        if await proc.wait() != 0:
            raise RuntimeError("the node workload failed")

    return run


def node_version(modules: Path, package: str) -> str:
    return json.loads((modules / package / "package.json").read_text())["version"]


async def capture(
    name: str, header: str, admin_dsn: str, workload: Callable[[str], Awaitable[None]]
) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text)")
    params = dsn_parts(admin_dsn)
    relay = Relay((params["host"], int(params["port"])))
    port = await relay.start()
    through = psycopg.conninfo.make_conninfo(
        admin_dsn, host="127.0.0.1", port=str(port), application_name="wire-trace"
    )
    await workload(through)
    await relay.stop()
    lines = [f"# {header}", "# C<n>/S<n>: client/server bytes of connection n; one chunk a line"]
    lines += [f"{side}{conn} {data!r}" for side, conn, data in relay.chunks]
    (HERE / f"{name}.trace").write_text("\n".join(lines) + "\n")
    print(f"{name}: {len(relay.chunks)} chunks")


async def main() -> None:
    server = start_postgres("auto", None)
    try:
        dsn = server.admin_dsn
        pg_modules = ROOT / "examples" / "node-driver" / "node_modules"
        js_modules = ROOT / "examples" / "postgres-js-driver" / "node_modules"
        psycopg_v, asyncpg_v = version("psycopg"), version("asyncpg")
        await capture("psycopg", f"psycopg {psycopg_v}, AsyncConnection", dsn, psycopg_workload)
        await capture(
            "psycopg_pipeline",
            f"psycopg {psycopg_v}, pipeline mode",
            dsn,
            psycopg_pipeline_workload,
        )
        await capture("asyncpg", f"asyncpg {asyncpg_v}", dsn, asyncpg_workload)
        await capture(
            "node_postgres",
            f"node-postgres (pg) {node_version(pg_modules, 'pg')}",
            dsn,
            node_workload(NODE_PG, pg_modules),
        )
        await capture(
            "postgres_js",
            f"postgres.js (postgres) {node_version(js_modules, 'postgres')}, pool of 2",
            dsn,
            node_workload(POSTGRES_JS, js_modules),
        )
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
