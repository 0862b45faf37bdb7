"""Per-test databases: cloned from the installed template, isolated, all dropped at the end."""

from __future__ import annotations

import psycopg
import pytest

from harness.errors import HarnessError
from harness.postgres.databases import DatabaseFactory, database_name


async def _install(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE notes (body text)")


def _ours(admin: psycopg.Connection) -> set[str]:
    rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'turnproof_%'")
    return {name for (name,) in rows.fetchall()}


@pytest.fixture
def admin(postgres_server):
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
        yield conn


def test_clones_have_the_schema_and_never_share_rows(postgres_server, admin):
    before = _ours(admin)
    factory = DatabaseFactory(postgres_server.admin_dsn)
    try:
        factory.prepare_template(_install)
        first, second = factory.create(), factory.create()
        assert database_name(first) != database_name(second)
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("INSERT INTO notes VALUES ('only in the first')")
        with psycopg.connect(second, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        third = factory.create()  # cloned after the first was written to: still empty
        with psycopg.connect(third, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        assert len(_ours(admin) - before) == 4  # template and three clones
    finally:
        factory.close()
    assert _ours(admin) == before


def test_drop_works_while_the_adapter_still_holds_a_connection(postgres_server, admin):
    factory = DatabaseFactory(postgres_server.admin_dsn)
    try:
        factory.prepare_template(_install)
        dsn = factory.create()
        leaked = psycopg.connect(dsn)  # an adapter that forgot to close
        factory.drop(dsn)
        assert database_name(dsn) not in _ours(admin)
        assert _is_dead(leaked)
        leaked.close()
    finally:
        factory.close()


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_a_failing_install_is_a_harness_error_and_leaves_nothing(postgres_server, admin):
    async def broken_install(dsn: str) -> None:
        raise RuntimeError("schema file missing")

    before = _ours(admin)
    factory = DatabaseFactory(postgres_server.admin_dsn)
    with pytest.raises(HarnessError, match=r"install\(\) failed .* schema file missing"):
        factory.prepare_template(broken_install)
    factory.close()
    assert _ours(admin) == before


def test_inner_run_with_failures_drops_every_database(run_scenarios, admin):
    before = _ours(admin)
    run = run_scenarios("reference_impl.broken:unguarded_step", "--requirement", "MSG-4")
    assert run.status("MSG-4") == "fail"
    assert _ours(admin) == before
