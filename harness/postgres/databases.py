"""One fresh database per test, cloned from a template where the adapter's schema is installed.

Installing a schema takes far longer than copying a database, so `install()`
runs once per run and each test gets `CREATE DATABASE ... TEMPLATE`: no test
sees another's rows, and no test pays for the install.
"""

from __future__ import annotations

import itertools
import os
import secrets
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import psycopg
from psycopg import pq, sql
from psycopg.abc import Params, Query
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness.errors import HarnessError

DATABASE_PREFIX = "turnproof_"
EXIT_WAIT = 0.5
"""How long a drop waits for the database's last backends to exit by themselves (its
clients just closed): DROP DATABASE ... WITH (FORCE) ends any still there, but sleeps
100 ms each time it finds one, and most are gone within milliseconds."""
EXIT_POLL = 0.001


def with_params(dsn: str, **params: str) -> str:
    """The same DSN with some connection parameters replaced (dbname, application_name)."""
    return make_conninfo(dsn, **params)


def database_name(dsn: str) -> str:
    return conninfo_to_dict(dsn).get("dbname", "")


class DatabaseFactory:
    """Creates, clones and drops this run's databases on one server."""

    def __init__(self, admin_dsn: str) -> None:
        self._admin_dsn = with_params(admin_dsn, application_name="turnproof-admin")
        self._shown_dsn = _redacted(admin_dsn)
        self._run_tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self._template = f"{DATABASE_PREFIX}{self._run_tag}_template"
        self._numbers = itertools.count(1)
        self._live: set[str] = set()
        self._lock = threading.Lock()
        self._has_template = False
        self.clone_seconds: list[float] = []
        self._admin = self._connect()
        # Copying the template's files is ~10x faster than WAL-logging it block by
        # block (PostgreSQL 15+'s default) for databases this small.
        self._strategy = " STRATEGY FILE_COPY" if self._admin.info.server_version >= 150000 else ""

    def prepare_template(
        self,
        install: Callable[[str], Awaitable[None]],
        *,
        probe: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Create the template database and run the adapter's install() in it, once.

        `probe`, if given, runs against the installed template before it is
        sealed; its errors propagate unchanged.
        """
        self._execute("CREATE DATABASE {}", self._template)
        self._has_template = True
        dsn = with_params(
            self._admin_dsn, dbname=self._template, application_name="turnproof-install"
        )
        try:
            _run_async(install, dsn)
        except Exception as exc:
            raise HarnessError(
                f"the adapter's install() failed on a fresh database: {type(exc).__name__}: {exc}"
            ) from exc
        if probe is not None:
            _run_async(probe, dsn)
        # Nobody may stay connected to a template, or cloning it fails.
        self._run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self._template,),
        )

    def create(self) -> str:
        """A fresh clone of the template; returns its DSN."""
        if not self._has_template:
            raise HarnessError("prepare_template() must run before databases are cloned")
        name = f"{DATABASE_PREFIX}{self._run_tag}_{next(self._numbers)}"
        self._live.add(name)  # before: an interrupted clone is dropped too, if it was made
        started = time.perf_counter()
        self._execute(f"CREATE DATABASE {{}} TEMPLATE {{}}{self._strategy}", name, self._template)
        self.clone_seconds.append(time.perf_counter() - started)
        return with_params(self._admin_dsn, dbname=name, application_name="turnproof")

    def drop(self, dsn: str) -> None:
        name = database_name(dsn)
        self._until_unused(name)
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        self._live.discard(name)

    def _until_unused(self, name: str) -> None:
        deadline = time.monotonic() + EXIT_WAIT
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        while (row := self._run(query, (name,)).fetchone()) and row[0]:
            if time.monotonic() > deadline:
                return
            time.sleep(EXIT_POLL)  # bounds a wait on other processes

    def median_clone_ms(self) -> float | None:
        return statistics.median(self.clone_seconds) * 1000 if self.clone_seconds else None

    def close(self) -> None:
        """Drop every database this run made, template last.

        A Ctrl-C may have stopped the admin connection midway through a statement (a clone
        being made): that statement is cancelled and the connection replaced first, since
        one still waiting for its answer cannot take the drops.
        """
        if self._admin.info.transaction_status == pq.TransactionStatus.ACTIVE:
            self._admin.cancel_safe(timeout=5)
            self._admin.close()
            self._admin = self._connect()
        try:
            for name in sorted(self._live):
                self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
            self._live.clear()
            if self._has_template:
                self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", self._template)
                self._has_template = False
        finally:
            self._admin.close()

    def _execute(self, statement: str, *names: str) -> None:
        self._run(sql.SQL(statement).format(*(sql.Identifier(n) for n in names)))

    def _run(self, query: Query, params: Params | None = None) -> psycopg.Cursor:
        """Run on the admin connection, reconnecting once if it died.

        The connection lives as long as the run, and a scenario may restart the
        server under it (`EmbeddedPostgres.restart`). Only a dead connection is
        retried, once: its statement found no server, or the crash rolled it
        back. Any other error, and a failure on the new connection, propagate.
        """
        with self._lock:  # the clone workers of the scenarios and of a race share it
            if not self._admin.closed:
                try:
                    return self._admin.execute(query, params)
                except psycopg.OperationalError:
                    if not self._admin.closed:
                        raise
            self._admin.close()
            self._admin = self._connect()
            return self._admin.execute(query, params)

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._admin_dsn, autocommit=True)
        except psycopg.Error as exc:
            raise HarnessError(
                f"cannot connect to PostgreSQL with {self._shown_dsn}: {exc}".strip()
            ) from None


def _run_async(function: Callable[[str], Awaitable[None]], argument: str) -> None:
    """Run a coroutine function to completion from sync code, even inside a running loop."""

    async def call() -> None:
        await function(argument)

    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(call)


def _redacted(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)
