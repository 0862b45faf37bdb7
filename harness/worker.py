"""`python -m harness.worker --adapter SPEC`: any Python adapter behind the driver protocol.

The worker is the Python side of docs/driver-protocol.md: it lets the harness run a
Python implementation in a process of its own (so kill scenarios can SIGKILL a
writer), and it is the protocol's executable reference for drivers in other
languages. One worker serves one `install` or one connected store, then exits.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc

from harness.adapter_loading import AdapterLoadError, load_adapter
from harness.contract import (
    Adapter,
    Clock,
    InvalidArgument,
    RunAlreadyActive,
    StreamWriter,
    TurnStore,
)
from harness.driver import protocol
from harness.driver.protocol import ProtocolViolation, WireError
from harness.virtual_time import VirtualClock

EXIT_USAGE = 2
STDIN = 0
READ_SIZE = 65536
CLOSE_TIMEOUT = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.worker",
        description="Serve a Python turnproof adapter over the JSON-lines driver protocol "
        "(stdin/stdout; see docs/driver-protocol.md).",
    )
    parser.add_argument(
        "--adapter",
        required=True,
        help="'package.module:attribute' or a registered adapter name (as for turnproof run)",
    )
    args = parser.parse_args(argv)
    try:
        adapter = load_adapter(args.adapter)
    except AdapterLoadError as exc:
        print(f"turnproof worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    hello = protocol.Hello(
        protocol.PROTOCOL_VERSION, adapter.name, tuple(sorted(adapter.capabilities))
    )
    _write(hello.to_message())
    try:
        return anyio.run(Worker(adapter).serve, backend="asyncio")
    except Exception as exc:  # the worker itself broke: say so on the protocol, then exit
        _write({"fatal": f"turnproof worker: {type(exc).__name__}: {exc}"})
        raise


def _write(message: dict[str, Any]) -> None:
    """Lines are small and the harness always reads: a blocking write keeps them whole."""
    sys.stdout.buffer.write(protocol.encode_line(message))
    sys.stdout.buffer.flush()


def offset_clock(offset: float | None) -> Clock | None:
    """The harness's clock, rebuilt on this side: real time plus the offset it measured."""
    if offset is None:
        return None
    delta = timedelta(seconds=offset)
    return lambda: datetime.now(UTC) + delta


class HostedWriter:
    """A streaming writer and the task it lives in: a writer may keep its timers in a task
    group it entered when opened, so it is opened and closed by that one task."""

    def __init__(self) -> None:
        self.writer: StreamWriter | None = None
        self.close_requested = anyio.Event()
        self.closed = anyio.Event()
        self.close_error: Exception | None = None

    async def host(
        self,
        store: TurnStore,
        debounce: timedelta,
        clock: VirtualClock | None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.writer = await store.writer(debounce, timers=clock)
        task_status.started()
        try:
            await self.close_requested.wait()
        finally:
            try:
                await self.writer.aclose()
            except Exception as exc:
                self.close_error = exc
            finally:
                self.closed.set()

    async def close(self) -> None:
        self.close_requested.set()
        await self.closed.wait()
        if self.close_error is not None:
            raise self.close_error


class Worker:
    """One process's state: new, then installing or connected, then closed; a connected
    store's writers by handle, and the one virtual clock they may share (protocol 2)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.state = "new"
        self.store: TurnStore | None = None
        self.writers: dict[int, HostedWriter] = {}
        self.clock = VirtualClock()
        self._handles = itertools.count(1)
        self._tasks: anyio.abc.TaskGroup | None = None

    async def serve(self) -> int:
        close_id: int | None = None
        async with contextlib.aclosing(_stdin_lines()) as lines, anyio.create_task_group() as tasks:
            self._tasks = tasks
            async for line in lines:
                try:
                    request = protocol.parse_request(protocol.decode_line(line))
                    self._admit(request)
                except ProtocolViolation as exc:
                    _write(protocol.error_message(exc.request_id, _protocol_error(str(exc))))
                    continue
                if request.op == "close":
                    close_id = request.id
                    break
                tasks.start_soon(self._answer, request)
            tasks.cancel_scope.cancel()  # close or end of input: abandon what still runs
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
            if self.store is not None:
                await self.store.aclose()
        if close_id is not None:
            _write(protocol.ok_message(close_id, "close", None))
        return 0

    def _admit(self, request: protocol.Request) -> None:
        """The lifecycle, strictly: one install or one connect first, operations after a
        connect has answered, close at any time."""
        op = request.op
        if op == "close":
            return
        if op in protocol.LIFECYCLE:
            if self.state != "new":
                raise ProtocolViolation(f"{op}: this driver is already {self.state}", request.id)
            self.state = "installing" if op == "install" else "connecting"
        elif self.state != "connected":
            raise ProtocolViolation(
                f"{op}: no store is connected (the driver is {self.state})", request.id
            )

    async def _answer(self, request: protocol.Request) -> None:
        try:
            result = await self._perform(request)
            message = protocol.ok_message(request.id, request.op, result)
        except Exception as exc:
            message = protocol.error_message(request.id, wire_error(exc))
        _write(message)

    async def _perform(self, request: protocol.Request) -> Any:
        args = request.args
        if request.op == "install":
            try:
                await self.adapter.install(args["dsn"])
            finally:
                self.state = "installed"
            return None
        if request.op == "connect":
            try:
                clock = offset_clock(args["clock_offset"])
                self.store = await self.adapter.connect(args["dsn"], clock=clock)
            except BaseException:
                self.state = "failed to connect"
                raise
            self.state = "connected"
            return None
        assert self.store is not None
        if request.op in protocol.WRITER_REQUESTS:
            return await self._writer_request(request.op, dict(args))
        return await getattr(self.store, request.op)(**args)

    async def _writer_request(self, op: str, args: dict[str, Any]) -> Any:
        """Protocol 2: the streaming writer by handle, and the virtual clock."""
        if op == "clock_advance":
            return await self.clock.advance(args["seconds"])
        if op == "writer_open":
            assert self._tasks is not None
            hosted, handle = HostedWriter(), next(self._handles)
            clock = self.clock if args["virtual_time"] else None
            await self._tasks.start(hosted.host, self.store, args["debounce"], clock)
            self.writers[handle] = hosted
            return handle
        handle = args.pop("writer")
        hosted = self.writers.get(handle)
        if hosted is None or hosted.writer is None:
            raise InvalidArgument(f"{op}: no open writer with handle {handle}")
        if op == "writer_close":
            del self.writers[handle]
            return await hosted.close()
        return await getattr(hosted.writer, op.removeprefix("writer_"))(**args)


def wire_error(exc: Exception) -> WireError:
    """An exception of the implementation as the protocol's error kinds."""
    if isinstance(exc, RunAlreadyActive):
        return WireError("RunAlreadyActive", str(exc))
    if isinstance(exc, InvalidArgument):
        return WireError("InvalidArgument", str(exc))
    if isinstance(exc, ProtocolViolation):  # the adapter returned a value of the wrong type
        return WireError("Other", f"the adapter broke the contract's types: {exc}")
    description = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    return WireError("Other", description, indefinite=_outcome_unknown(exc))


def _outcome_unknown(exc: Exception) -> bool:
    """The race engine's unknown-outcome errors (harness.race.actors): the connection or the
    answer was lost. psycopg's are counted only if the adapter imported psycopg at all."""
    psycopg = sys.modules.get("psycopg")
    unknown: tuple[type[BaseException], ...] = (ConnectionError, EOFError)
    if psycopg is not None:
        unknown += (psycopg.OperationalError,)
    return isinstance(exc, unknown)


def _protocol_error(message: str) -> WireError:
    return WireError("ProtocolError", message)


async def _stdin_lines() -> AsyncIterator[bytes]:
    """stdin, line by line, read without blocking the loop: a worker told to close never
    waits on a read that has nothing coming. (A regular file or /dev/null never blocks.)"""
    was_blocking = os.get_blocking(STDIN)
    os.set_blocking(STDIN, False)
    partial: list[bytes] = []  # of a line not yet ended
    try:
        while True:
            try:
                chunk = os.read(STDIN, READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(STDIN)
                continue
            if not chunk:
                break
            *ended, rest = chunk.split(b"\n")
            if ended:
                ended[0] = b"".join([*partial, ended[0]])
                partial = []
            partial.append(rest)
            for line in ended:
                if line.strip():
                    yield line
    finally:
        os.set_blocking(STDIN, was_blocking)  # a terminal is shared with the shell
    if b"".join(partial).strip():
        yield b"".join(partial)


if __name__ == "__main__":
    sys.exit(main())
