"""DriverAdapter: the harness's side of the driver protocol (docs/driver-protocol.md).

An implementation in any language plugs in as an executable speaking JSON lines.
`DriverAdapter(command)` is an ordinary `Adapter`: every `install` and every
`connect` takes one driver process, and the store `connect` returns performs each
contract operation by a round trip to its process. The process is the replica:
killing it (`store.worker_pid`) is killing a writer.

Processes are `subprocess.Popen` children (or, for this interpreter's own
`python -m harness.worker`, forks of a fork server: harness.driver.fork_server) whose
pipes are awaited with `anyio.wait_readable`/`wait_writable`, so one is not tied to
the event loop it was started in. That is what lets the adapter keep a few *spares*
started ahead of need: a driver that takes half a second to start would otherwise
make every `connect` that slow, and the race scenarios open several
replicas inside a one-second staleness window. A spare is idle (no store, no
database connection) and is killed when the adapter closes; a store's process is
killed when the store closes.

Nothing here waits without a bound. A driver that exits, prints something that is
not the protocol, or leaves an operation unanswered past the timeout is killed,
and every operation in flight (and any later one) raises a `DriverError` that
says what the driver was doing and ends with its stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import itertools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any, Protocol

import anyio

from harness.adapter_loading import AdapterLoadError, import_path
from harness.contract import (
    STORE_OPERATIONS,
    WRITER_OPERATIONS,
    Clock,
    InvalidArgument,
    RunAlreadyActive,
    StreamWriter,
    Timers,
    TurnStore,
)
from harness.driver import protocol
from harness.driver.fork_server import ForkServer
from harness.driver.protocol import Hello, ProtocolViolation, WireError
from harness.errors import HarnessError, ImplementationFailure, TurnproofError, UsageError
from harness.requirements import CAPABILITIES
from harness.virtual_time import VirtualClock

DEFAULT_TIMEOUT = 30.0
"""Seconds a driver may take to say hello or to answer one operation."""
EXIT_TIMEOUT = 5.0
"""Seconds a driver may take to close its store and exit once asked to."""
DEFAULT_SPARES = 2
"""Driver processes kept started ahead of need (see the module docstring)."""
STDERR_TAIL_LINES = 20
EXIT_POLL = 0.005
READ_SIZE = 65536


class DriverStartError(AdapterLoadError):
    """The driver command did not start, or did not say a valid hello: the user's set-up
    (a UsageError: one line, exit 2)."""


class DriverError(TurnproofError):
    """The driver process failed the harness: it exited, hung, or broke the protocol.

    Each kind below is the implementation's fault, so each is an ImplementationFailure (a
    FAIL): the driver is the implementation under test, and the harness has already
    checked its own side of every message. A scenario that kills a driver on purpose
    expects the DriverExited that follows and catches it.
    """


class DriverExited(DriverError, ImplementationFailure, ConnectionError):
    """The driver process is gone, so the outcome of what was in flight is unknown
    (a ConnectionError, as the race engine counts unknown outcomes)."""


class DriverTimeout(DriverError, ImplementationFailure, TimeoutError):
    """An operation got no answer in time; the driver was killed."""


class DriverProtocolError(DriverError, ImplementationFailure):
    """A message broke the protocol (the driver's, or one of ours the driver rejected:
    ours are checked against the contract before they are sent, so the driver misread)."""


class DriverOperationError(TurnproofError):
    """The implementation raised something other than the contract's errors (kind Other):
    carried across the process boundary, it counts as it would have in process."""


class DriverIndefiniteError(DriverOperationError, ConnectionError):
    """The implementation lost its connection mid-operation: the outcome is unknown."""


def resolve_command(command: Sequence[str]) -> list[str]:
    """A leading `python` or `python3` means this interpreter, so `python -m harness.worker`
    runs with the harness's own packages whatever `python` is on PATH."""
    command = list(command)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


def forkable_worker(command: Sequence[str]) -> str | None:
    """The adapter of `python -m harness.worker --adapter SPEC` run by this interpreter,
    whose processes are forked from a fork server (harness.driver.fork_server) instead of
    started: the same worker, without importing the adapter each time."""
    match list(command):
        case [python, "-m", "harness.worker", "--adapter", spec] if python == sys.executable:
            return spec
    return None


def clock_offset(clock: Clock | None) -> float | None:
    """A Python clock cannot cross a process boundary; its offset from real time can."""
    if clock is None:
        return None
    reading = clock()
    return (reading - datetime.now(reading.tzinfo)).total_seconds()


class DriverAdapter:
    """An Adapter whose stores live in driver processes started from `command`.

    Construction runs the driver once to read its hello (name, capabilities,
    protocol version): the harness needs them before anything async runs.
    Call `close()` when done with the adapter to end its processes (an exit handler
    does it too).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        spares: int = DEFAULT_SPARES,
    ) -> None:
        self.shown = shlex.join(command)
        if not command:
            raise DriverStartError("--adapter-cmd: the command is empty")
        self.command = resolve_command(command)
        self.timeout = timeout
        self.spares = spares
        self.hello = _probe(self.command, self.shown, timeout)
        self.name = self.hello.implementation
        self.capabilities = frozenset(self.hello.capabilities)
        self._spares: deque[_Child] = deque()
        self._children: set[_Child] = set()  # every process of this adapter not yet released
        self._forked_adapter = forkable_worker(self.command)
        self._fork_server: ForkServer | None = None

    @classmethod
    def from_command_line(cls, command: str) -> DriverAdapter:
        """`--adapter-cmd` as typed: split like a shell would."""
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise DriverStartError(f"--adapter-cmd {command!r}: {exc}") from None
        return cls(argv)

    @classmethod
    def python_worker(cls, adapter_spec: str) -> DriverAdapter:
        """A Python adapter behind `python -m harness.worker`: its stores in processes
        (given the adapter's import path: scanning every installed distribution for an
        entry point would cost each worker, one per killed writer, 40 ms more to start)."""
        return cls([sys.executable, "-m", "harness.worker", "--adapter", import_path(adapter_spec)])

    async def install(self, dsn: str) -> None:
        process = await self._start()
        try:
            await process.call("install", dsn=dsn)
        finally:
            await process.close()

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> DriverStore:
        process = await self._start()
        try:
            await process.call("connect", dsn=dsn, clock_offset=clock_offset(clock))
        except BaseException:
            await process.close()
            raise
        return DriverStore(process, coalescing="coalescing" in self.capabilities)

    def close(self) -> None:
        """End every process of this adapter: the spares, and the process of any store its
        owner never closed (a test interrupted by Ctrl-C); that store's later calls fail."""
        self._spares.clear()
        for child in list(self._children):
            child.release()
        if self._fork_server is not None:
            self._fork_server.close()
            self._fork_server = None

    async def _start(self) -> DriverProcess:
        child = self._spares.popleft() if self._spares else self._spawn()
        while len(self._spares) < self.spares:
            self._spares.append(self._spawn())
        return await DriverProcess.handshake(child, self.hello, self.timeout)

    def _spawn(self) -> _Child:
        return _Child.spawn(self.command, self.shown, self._children, self._server())

    def _server(self) -> ForkServer | None:
        """The fork server of a forkable worker command, started at the first spawn."""
        if self._forked_adapter is not None and self._fork_server is None:
            server = ForkServer(self._forked_adapter, answer_within=self.timeout)
            if server.forkable():
                self._fork_server = server
            else:
                server.close()
                self._forked_adapter = None
        return self._fork_server

    def __repr__(self) -> str:
        return f"<DriverAdapter {self.name!r}: {self.shown}>"


class DriverStore(TurnStore):
    """A connected store in its own driver process; every contract operation (added below,
    with the contract's signatures) is one request to it."""

    def __init__(self, process: DriverProcess, *, coalescing: bool = False) -> None:
        self._process = process
        self._coalescing = coalescing
        self._clock: VirtualClock | None = None  # the virtual clock its process follows
        self._stop_following: Callable[[], None] = lambda: None
        self._clock_users = 0  # its open writers on that clock

    @property
    def worker_pid(self) -> int:
        """The driver's pid, also its process group id: SIGKILL it to kill this replica."""
        return self._process.pid

    async def aclose(self) -> None:
        self._stop_following()
        await self._process.close()

    async def writer(self, debounce: timedelta, *, timers: Timers | None = None) -> StreamWriter:
        """A streaming writer in the driver process (protocol 2). Its window runs on real
        time, or on the driver's own virtual clock, which then follows `timers`: every
        advance of that VirtualClock is sent on as `clock_advance`."""
        if not self._coalescing:
            raise HarnessError(
                f"{self._process.label} did not declare `coalescing`: it has no writer"
            )
        if timers is not None and not isinstance(timers, VirtualClock):
            raise UsageError(
                f"a driver's writer runs on real time or on a VirtualClock (harness.virtual_time), "
                f"not on {type(timers).__name__}: a Python object cannot cross to its process"
            )
        if timers is not None:
            self._follow(timers)
        try:
            handle = await self._process.call(
                "writer_open", debounce=debounce, virtual_time=timers is not None
            )
        except BaseException:
            self._unfollow(timers)
            raise
        return DriverWriter(self._process, handle, closed=lambda: self._unfollow(timers))

    def _follow(self, clock: VirtualClock) -> None:
        """Keep the process's one virtual clock in step with `clock` while a writer uses it."""
        if self._clock is not None and self._clock is not clock:
            raise HarnessError(
                f"{self._process.label} follows another VirtualClock, of a writer still open: "
                "a driver process has one virtual clock, so its open writers share one"
            )
        if self._clock is None:

            async def advance(seconds: float) -> None:
                await self._process.call("clock_advance", seconds=seconds)

            self._clock, self._stop_following = clock, clock.follow(advance)
        self._clock_users += 1

    def _unfollow(self, clock: VirtualClock | None) -> None:
        if clock is None or clock is not self._clock:
            return
        self._clock_users -= 1
        if not self._clock_users:
            self._stop_following()
            self._clock, self._stop_following = None, lambda: None

    def freeze(self) -> None:
        """SIGSTOP the driver's process group: it runs nothing more, so whatever happens to
        its connections now, it can neither see nor report it (until `kill`)."""
        self._process.child.signal(signal.SIGSTOP)

    async def kill(self) -> None:
        """SIGKILL the driver's process group, as a crash would: no close, no goodbye.
        Operations in flight, and any later one, raise DriverExited (outcome unknown)."""
        await self._process.fail(DriverExited, "was killed (SIGKILL) by the harness")

    def __repr__(self) -> str:
        return f"<DriverStore of {self._process.label}>"


def _operation(name: str) -> Any:
    async def operation(self: DriverStore, **kwargs: Any) -> Any:
        return await self._process.call(name, **kwargs)

    operation.__name__ = operation.__qualname__ = name
    operation.__signature__ = inspect.signature(getattr(TurnStore, name))  # type: ignore[attr-defined]
    operation.__doc__ = f"harness.TurnStore.{name}, performed by the driver process."
    return operation


for _name in STORE_OPERATIONS:
    setattr(DriverStore, _name, _operation(_name))


class DriverWriter(StreamWriter):
    """A streaming writer living in a driver process, named there by its handle; every
    writer operation (added below, with the contract's signatures) is one request."""

    def __init__(self, process: DriverProcess, handle: int, *, closed: Callable[[], None]) -> None:
        self._process = process
        self._handle = handle
        self._closed = closed

    async def aclose(self) -> None:
        try:
            await self._process.call("writer_close", writer=self._handle)
        finally:
            self._closed()
            self._closed = lambda: None

    def __repr__(self) -> str:
        return f"<DriverWriter {self._handle} of {self._process.label}>"


def _writer_operation(name: str) -> Any:
    async def operation(self: DriverWriter, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs).arguments
        del bound["self"]
        return await self._process.call(f"writer_{name}", writer=self._handle, **bound)

    signature = inspect.signature(getattr(StreamWriter, name))
    operation.__name__ = operation.__qualname__ = name
    operation.__signature__ = signature  # type: ignore[attr-defined]
    operation.__doc__ = f"harness.StreamWriter.{name}, performed by the driver process."
    return operation


for _name in WRITER_OPERATIONS:
    setattr(DriverWriter, _name, _writer_operation(_name))


# One child process ------------------------------------------------------------------------


class _Process(Protocol):
    """What a driver needs of its process: a subprocess.Popen, or a ForkedProcess."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self) -> int | None: ...


class _Child:
    """A started driver process and its pipes, usable from any event loop."""

    def __init__(
        self,
        process: _Process,
        pipes: tuple[int, int],
        shown: str,
        stderr: IO[bytes],
        owner: set[_Child],
    ) -> None:
        self.process = process
        self.shown = shown
        self.stderr = stderr
        self.stdin, self.stdout = pipes
        os.set_blocking(self.stdin, False)
        os.set_blocking(self.stdout, False)
        self._buffer = bytearray()
        self.released = False
        self._owner = owner
        owner.add(self)
        _LIVE.add(process.pid)

    @classmethod
    def spawn(
        cls, command: list[str], shown: str, owner: set[_Child], fork_server: ForkServer | None
    ) -> _Child:
        """Start `command`, or fork it from `fork_server` (which runs that same worker)."""
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by release)
        their_stdin, stdin = os.pipe()
        stdout, their_stdout = os.pipe()
        process: _Process
        try:
            if fork_server is not None:
                process = fork_server.start(their_stdin, their_stdout, stderr.fileno())
            else:
                process = subprocess.Popen(
                    command,
                    stdin=their_stdin,
                    stdout=their_stdout,
                    stderr=stderr,
                    start_new_session=True,  # Ctrl-C reaches the harness, which ends its drivers
                )
        except BaseException as exc:
            for fd in (stdin, stdout):
                os.close(fd)
            stderr.close()
            if isinstance(exc, OSError):
                raise DriverStartError(f"--adapter-cmd {shown!r}: cannot start it: {exc}") from None
            raise
        finally:
            os.close(their_stdin)
            os.close(their_stdout)
        return cls(process, (stdin, stdout), shown, stderr, owner)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def read_line(self) -> bytes:
        """The next line, without its newline; EOFError at the end of the driver's output."""
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            if len(self._buffer) > protocol.MAX_LINE_BYTES:
                raise ProtocolViolation(f"a line longer than {protocol.MAX_LINE_BYTES} bytes")
            searched = len(self._buffer)
            try:
                chunk = os.read(self.stdout, READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self.stdout)
                continue
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def write(self, data: bytes) -> None:
        """All of `data`; BrokenPipeError once the driver no longer reads."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.stdin, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.stdin)

    async def wait(self, seconds: float) -> int | None:
        """Its exit status, waiting at most `seconds`; None if it still runs. Polling only
        bounds the wait for another process, and starts no thread that could outlive it."""
        with anyio.move_on_after(seconds):
            while True:
                if self.process.poll() is not None:
                    break
                await anyio.sleep(EXIT_POLL)
        return self.returncode

    def signal(self, number: signal.Signals) -> None:
        """Send `number` to its process group, if it is not reaped yet."""
        if self.returncode is None:  # not reaped yet, so its pid names it still
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, number)

    def kill(self) -> None:
        """SIGKILL its process group (a wrapper script's children too) and reap it. The pipes
        stay open, so a task reading them sees their end rather than a closed descriptor."""
        if self.returncode is None:
            self.signal(signal.SIGKILL)
            self.process.wait()
        _LIVE.discard(self.pid)

    def release(self) -> None:
        """Kill it if need be, then close its pipes and its stderr file."""
        if self.released:
            return
        self.released = True
        self._owner.discard(self)
        self.kill()
        os.close(self.stdin)
        os.close(self.stdout)
        self.stderr.close()

    def stderr_tail(self) -> list[str]:
        if self.stderr.closed:
            return []
        size = os.fstat(self.stderr.fileno()).st_size
        start = max(0, size - 16_384)
        text = os.pread(self.stderr.fileno(), size - start, start).decode("utf-8", "replace")
        return text.splitlines()[-STDERR_TAIL_LINES:]


# One driver ------------------------------------------------------------------------------


@dataclass
class _Call:
    id: int
    op: str
    args: dict[str, Any]
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        self.done, self.value = True, value

    def fail(self, error: BaseException) -> None:
        self.done, self.error = True, error

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def describe(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.args.items())
        return f"{self.op}({args})"


class DriverProcess:
    """One driver that said hello: requests out on stdin, answers back on stdout.

    Concurrent calls are allowed; whoever holds the read lock reads the next line and
    hands it to the call it answers, so no background task is needed.
    """

    def __init__(self, child: _Child, timeout: float) -> None:
        self.child = child
        self.timeout = timeout
        self.label = f"driver {child.shown!r} (pid {child.pid})"
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._abandoned: set[int] = set()
        self._read_lock = anyio.Lock()
        self._write_lock = anyio.Lock()
        self._failure: DriverError | None = None
        self._closed = False

    @property
    def pid(self) -> int:
        return self.child.pid

    @classmethod
    async def handshake(cls, child: _Child, hello: Hello, answer_within: float) -> DriverProcess:
        """Read the child's hello: the adapter's, in our protocol version, in time."""
        try:
            with anyio.fail_after(answer_within):
                line = await child.read_line()
            said = check_hello(line, child.shown)
            if said != hello:
                raise DriverStartError(
                    f"--adapter-cmd {child.shown!r}: its hello changed from {hello} to {said}"
                )
        except BaseException as exc:
            if isinstance(exc, EOFError):  # it is exiting: let its status say how
                await child.wait(EXIT_TIMEOUT)
            tail = child.stderr_tail()
            child.release()
            if not isinstance(exc, (TimeoutError, EOFError, ProtocolViolation)):
                raise
            reason = (
                f"no hello within {answer_within:g} s"
                if isinstance(exc, TimeoutError)
                else f"{_exit_reason(child.returncode)} before its hello"
            )
            raise DriverStartError(
                f"--adapter-cmd {child.shown!r} (pid {child.pid}): {reason}{_last_line(tail)}"
            ) from None
        return cls(child, answer_within)

    async def call(self, op: str, **kwargs: Any) -> Any:
        """One request and its answer; raises what the answer says, or a DriverError."""
        args = protocol.encode_args(op, kwargs)
        if self._failure is None and self.child.released:
            self._failure = DriverExited(f"{self.label} was ended when its adapter closed")
        if self._failure is not None:
            raise type(self._failure)(f"{self.label} is gone, {op} not sent: {self._failure}")
        call = _Call(next(self._ids), op, args)
        self._pending[call.id] = call
        try:
            await self._send(protocol.request_message(call.id, op, args))
            with anyio.move_on_after(self.timeout):
                while not call.done:
                    async with self._read_lock:
                        if not call.done:
                            await self._receive_one()
            if not call.done:
                await self.fail(
                    DriverTimeout, f"gave no answer to {op} within {self.timeout:g} s; killed it"
                )
        except BaseException:
            if not call.done:  # cancelled: its answer, if one comes, is dropped
                self._abandoned.add(call.id)
            raise
        finally:
            del self._pending[call.id]
        return call.outcome()

    async def close(self) -> None:
        """Ask the driver to close its store, then end the process: once `close` is answered
        nothing of the store is left in it, so waiting for it to exit would only cost time.
        Never raises: the store is gone either way (a kill scenario may have killed it)."""
        if self._closed or self.child.released:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self._failure is None:
                    with anyio.move_on_after(EXIT_TIMEOUT):
                        await self.call("close")
            except (DriverError, DriverOperationError, ProtocolViolation):
                pass  # its stderr, echoed below, tells
            finally:
                self._echo_stderr()
                self.child.release()

    # -- the pipes ------------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            async with self._write_lock:
                await self.child.write(protocol.encode_line(message))
        except OSError:
            pass  # the driver is gone: the end of its output, read next, reports why

    async def _receive_one(self) -> None:
        """Read one line and settle the call it answers."""
        try:
            line = await self.child.read_line()
        except EOFError:
            await self.child.wait(EXIT_TIMEOUT)
            await self.fail(DriverExited, _exit_reason(self.child.returncode))
            return
        except ProtocolViolation as exc:
            await self.fail(DriverProtocolError, f"broke the protocol: {exc}; killed it")
            return
        try:
            self._settle(protocol.decode_line(line))
        except _Fatal as fatal:
            await self.fail(DriverExited, f"reported a fatal error: {fatal}")
        except ProtocolViolation as exc:
            await self.fail(
                DriverProtocolError,
                f"broke the protocol: {exc}; killed it\n  line: {_short(line, 300)}",
            )

    def _settle(self, message: dict[str, Any]) -> None:
        if "fatal" in message:
            raise _Fatal(protocol.parse_fatal(message))
        response = protocol.parse_response(message)
        if response.id is None:
            assert response.error is not None
            raise ProtocolViolation(
                f"it could not read a request of ours: {response.error.message}"
            )
        if response.id in self._abandoned:
            self._abandoned.discard(response.id)
            return
        call = self._pending.get(response.id)
        if call is None:
            raise ProtocolViolation(f"an answer to id {response.id}, which is not in flight")
        if response.error is not None:
            call.fail(self._error(call, response.error))
        else:
            call.succeed(protocol.decode_result(call.op, response.ok))

    def _error(self, call: _Call, error: WireError) -> Exception:
        """The driver's error as the exception the contract (or the harness) names."""
        if error.kind == "RunAlreadyActive":
            return RunAlreadyActive(str(call.args.get("chat_id", "")), error.message)
        if error.kind == "InvalidArgument":
            return InvalidArgument(error.message)
        if error.kind == "ProtocolError":
            return DriverProtocolError(
                f"{self.label} rejected {call.describe()} as a protocol error: {error.message}"
            )
        if error.indefinite:
            return DriverIndefiniteError(error.message)
        return DriverOperationError(error.message)

    # -- ending -----------------------------------------------------------------------------

    async def fail(self, kind: type[DriverError], reason: str) -> None:
        """Kill the driver and fail every call in flight with one explanation."""
        if self._failure is not None:
            return
        tail = self.child.stderr_tail()
        self.child.kill()
        doing = "; ".join(c.describe() for c in self._pending.values() if not c.done)
        message = (
            f"{self.label} {reason}\n  in flight: {doing or 'nothing (between operations)'}"
            + "\n  stderr: "
            + ("\n    ".join(["", *tail]) if tail else "(empty)")
        )
        self._failure = kind(message)
        for call in self._pending.values():
            if not call.done:
                call.fail(kind(message))

    def _echo_stderr(self) -> None:
        """What the driver logged, into the test's captured stderr (shown if it fails)."""
        tail = self.child.stderr_tail()
        if tail:
            print(f"--- {self.label} stderr (last lines) ---", *tail, sep="\n", file=sys.stderr)


class _Fatal(Exception):
    """The driver's `{"fatal": ...}` line."""


# Start-up --------------------------------------------------------------------------------


def check_hello(line: bytes, shown: str) -> Hello:
    """The driver's first line as a Hello: right shape, our version, known capabilities."""
    try:
        hello = protocol.parse_hello(protocol.decode_line(line))
    except ProtocolViolation as exc:
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: its first line is not a hello ({exc})"
        ) from None
    if hello.protocol not in protocol.SUPPORTED_VERSIONS:
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: it speaks driver protocol version {hello.protocol}, "
            f"this harness speaks versions {', '.join(map(str, protocol.SUPPORTED_VERSIONS))}"
        )
    if hello.protocol < 2 and "coalescing" in hello.capabilities:
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: it declares `coalescing` in driver protocol version "
            f"{hello.protocol}; the streaming writer needs version 2 (say protocol 2)"
        )
    unknown = sorted(set(hello.capabilities) - CAPABILITIES)
    if unknown or not hello.capabilities:
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: capabilities must be a non-empty list of "
            f"{', '.join(sorted(CAPABILITIES))}; it declared {list(hello.capabilities)}"
        )
    return hello


def _probe(command: list[str], shown: str, timeout: float) -> Hello:
    """Run the driver with empty input: it says hello, sees the end of input and exits."""
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise DriverStartError(f"--adapter-cmd {shown!r}: cannot start it: {exc}") from None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: it did not say hello and exit within {timeout:g} s "
            "of an empty input"
        ) from None
    first = out.split(b"\n", 1)[0]
    if not first.strip():
        raise DriverStartError(
            f"--adapter-cmd {shown!r}: {_exit_reason(process.returncode)} without a hello"
            + _last_line(err.decode("utf-8", "replace").splitlines())
        )
    return check_hello(first, shown)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "closed its stdout"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _last_line(lines: list[str]) -> str:
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"; its stderr ends: {last}" if last else "; its stderr is empty"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LIVE: set[int] = set()
"""Driver process groups not yet reaped: killed when the harness exits, whatever path it
takes (a harness killed outright closes their stdin, which ends them too)."""


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
