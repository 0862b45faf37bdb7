"""Python worker processes forked from one that has already imported the adapter.

A `python -m harness.worker` process spends most of its start importing: a quarter of
a second of CPU for the reference, half a second with SQLAlchemy's ORM. A run starts
one per killed writer, and one per store when the whole suite goes through the worker,
hundreds in all. The fork server imports the worker and the adapter's module once; each
worker is then a fork of it, which skips the imports and runs the same `worker.main`.

The server runs as `python -c SERVER FD ADAPTER` and does nothing but fork:
single-threaded, no event loop, no connection, so a fork of it is as clean as a fresh
interpreter that made the same imports (if importing the adapter started a thread, it
says so, and the harness starts its workers instead). Over the Unix socket FD it receives a
request carrying a worker's stdin, stdout and stderr descriptors (SCM_RIGHTS), forks,
and answers with the worker's pid; it reaps every worker and reports its exit status
on the same socket, since only a parent can learn it. Each worker leads a process group
of its own, as a `start_new_session` child does, so the harness's `killpg` reaches it.
The server exits when the harness closes its end of the socket.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

from harness.adapter_loading import import_path
from harness.errors import HarnessError

RECORD = struct.Struct("!cii")
"""One report from the server: kind, pid, value. b"R": ready, its imports done (value 1
if it can fork, see `forkable`); b"S": a worker started (value unused); b"X": a worker
exited (value: its status as subprocess reports one, -N for signal N)."""
READY, STARTED, EXITED = b"R", b"S", b"X"
SERVER = "import sys; from harness.driver.fork_server import main; main(sys.argv[1:])"
"""The server's command (`-c`: `-m` would run this module a second time, as __main__,
after the package harness.driver imported it)."""
EXIT_POLL = 0.005


class ForkServer:
    """The harness's handle on one fork server; safe to use from any thread."""

    def __init__(self, adapter_spec: str, *, answer_within: float) -> None:
        self.adapter_spec = adapter_spec
        self._answer_within = answer_within
        self._socket, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(theirs.fileno()), adapter_spec],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._lock = threading.Lock()
        self._exited: dict[int, int] = {}
        self._buffer = b""
        self._gone = False
        self._forkable: bool | None = None

    def forkable(self) -> bool:
        """Whether its workers can be forks of it: not if importing the adapter started a
        thread, which a fork would not have (the caller then starts its workers instead).
        Waits for the server's imports, at most the answer timeout."""
        with self._lock:
            if self._forkable is None:
                self._socket.settimeout(self._answer_within)
                try:
                    kind, _pid, value = self._next_record()
                    self._forkable = kind == READY and value == 1
                except (OSError, EOFError):  # no answer: its workers are started instead
                    self._forkable = False
            return self._forkable

    def start(self, stdin: int, stdout: int, stderr: int) -> ForkedProcess:
        """Fork a worker on these descriptors (the caller keeps and closes its own)."""
        with self._lock:
            if self._gone:
                raise HarnessError(f"the fork server of {self.adapter_spec!r} has exited")
            self._socket.settimeout(self._answer_within)
            try:
                socket.send_fds(self._socket, [b"F"], [stdin, stdout, stderr])
                while (record := self._next_record())[0] != STARTED:
                    pass
            except (OSError, EOFError) as exc:
                self._gone = True
                raise HarnessError(
                    f"the fork server of {self.adapter_spec!r} did not start a worker: "
                    f"{exc or type(exc).__name__}"
                ) from None
            return ForkedProcess(self, record[1])

    def exit_status(self, pid: int, *, wait: bool) -> int | None:
        """`pid`'s exit status once the server has reaped it; None while it runs. If the
        server itself is gone the status is lost: None, once the process is gone too (or
        the answer timeout has passed)."""
        with self._lock:
            self._socket.settimeout(None if wait else 0.0)
            while pid not in self._exited and not self._gone:
                try:
                    self._next_record()
                except (BlockingIOError, TimeoutError):
                    return None
                except (OSError, EOFError):
                    self._gone = True
            if pid in self._exited:
                return self._exited.pop(pid)
        deadline = time.monotonic() + self._answer_within
        while wait and _exists(pid) and time.monotonic() < deadline:
            time.sleep(EXIT_POLL)  # the server is gone: the process ends all the same
        return None

    def close(self) -> None:
        """End the server (its workers are the caller's to end)."""
        with self._lock:
            self._gone = True
            self._socket.close()
        try:
            self._process.wait(timeout=self._answer_within)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _next_record(self) -> tuple[bytes, int, int]:
        """The server's next report; an exit is also filed, for `exit_status`."""
        while len(self._buffer) < RECORD.size:
            chunk = self._socket.recv(RECORD.size * 64)
            if not chunk:
                raise EOFError("the fork server exited")
            self._buffer += chunk
        record, self._buffer = self._buffer[: RECORD.size], self._buffer[RECORD.size :]
        kind, pid, value = RECORD.unpack(record)
        if kind == EXITED:
            self._exited[pid] = value
        return kind, pid, value


class ForkedProcess:
    """A worker forked by a ForkServer, with the part of subprocess.Popen a driver uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._server = server

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_status(self.pid, wait=False)
        return self.returncode

    def wait(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_status(self.pid, wait=True)
        return self.returncode


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The server side -----------------------------------------------------------------------


def serve(control: socket.socket, adapter_spec: str) -> None:
    """Fork a worker per request until the harness closes the socket; report exits."""
    importlib.import_module("harness.worker")
    adapter = adapter_spec
    with contextlib.suppress(Exception):  # a worker then fails to load it, and says so
        adapter = import_path(adapter_spec)
        importlib.import_module(adapter.partition(":")[0])
    control.sendall(RECORD.pack(READY, 0, _single_threaded()))
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)

    def forget_server() -> None:
        """In a worker: none of the server's descriptors or signal handling."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        selector.close()
        control.close()
        os.close(wake_read)
        os.close(wake_write)

    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                try:
                    message, fds, _flags, _address = socket.recv_fds(control, 1, 3)
                except ConnectionError:
                    return
                if not message:
                    return
                pid = _fork_worker(fds, adapter, forget_server)
                control.sendall(RECORD.pack(STARTED, pid, 0))
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                for pid, status in _reaped():
                    control.sendall(RECORD.pack(EXITED, pid, status))


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


def _reaped() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, os.waitstatus_to_exitcode(status)))
    return reaped


def _fork_worker(fds: list[int], adapter_path: str, forget_server: Callable[[], None]) -> int:
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        with contextlib.suppress(OSError):  # the worker may have done it, or exited
            os.setpgid(pid, pid)
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        forget_server()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        from harness import worker

        code = worker.main(["--adapter", adapter_path])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> None:
    """The server's entry point: FD ADAPTER_SPEC."""
    descriptor, adapter_spec = argv
    serve(socket.socket(fileno=int(descriptor)), adapter_spec)
