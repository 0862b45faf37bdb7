"""The drivers turnproof ships (`python -m harness.worker`, the Node.js example) seen from
outside, as a harness in any language would see them: raw JSON lines on real pipes.
Every line gets an answer (a ProtocolError for a bad one), never a hang; close and the
end of input end the process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.abc
import psycopg
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from harness.adapter_loading import load_adapter
from harness.driver import protocol
from harness.postgres.databases import DatabaseFactory, with_params
from tests.driver_helpers import BOUND, WORKER, node_driver_command, until_waiting_on_a_lock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def dsn(postgres_server) -> Iterator[str]:
    """One database with the reference schema for the module (tests use their own chats)."""
    factory = DatabaseFactory(postgres_server.admin_dsn)
    factory.prepare_template(load_adapter("reference").install)
    yield factory.create()
    factory.close()


class Session:
    """A worker on pipes: write a line, read the answer, each bounded."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self.stdout = BufferedByteReceiveStream(process.stdout)

    async def send(self, message: str | dict[str, Any]) -> None:
        line = message if isinstance(message, str) else json.dumps(message)
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(BOUND):
            return json.loads(await self.stdout.receive_until(b"\n", 1 << 20))

    async def ask(self, message: str | dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.receive()

    async def exit_status(self) -> int:
        with anyio.fail_after(BOUND):
            return await self.process.wait()


@pytest.fixture(params=["python-worker", "node-driver"])
async def session(request: pytest.FixtureRequest) -> AsyncIterator[Session]:
    command = WORKER if request.param == "python-worker" else node_driver_command()
    async with await anyio.open_process(command) as process:
        driver = Session(process)
        hello = await driver.receive()
        assert hello["hello"]["protocol"] == protocol.PROTOCOL_VERSION
        yield driver
        if process.returncode is None:
            process.kill()


def protocol_error(answer: dict[str, Any], request_id: int | None, says: str) -> None:
    assert answer["id"] == request_id, answer
    assert answer["error"]["kind"] == "ProtocolError", answer
    assert says in answer["error"]["message"], answer


def connect(request_id: int, dsn: str) -> dict[str, Any]:
    return {"id": request_id, "op": "connect", "args": {"dsn": dsn, "clock_offset": None}}


def test_it_says_hello_and_exits_when_its_input_ends():
    done = subprocess.run(WORKER, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOUND)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line) == {
        "hello": {
            "protocol": protocol.PROTOCOL_VERSION,
            "implementation": "reference",
            "capabilities": sorted(load_adapter("reference").capabilities),
        }
    }


async def test_every_bad_line_gets_a_protocol_error_and_the_worker_carries_on(session, dsn):
    protocol_error(await session.ask("garbage"), None, "not a JSON line")
    protocol_error(await session.ask("[1, 2]"), None, "must be a JSON object")
    protocol_error(await session.ask({"id": -1, "op": "close", "args": {}}), None, "id:")
    create = {"id": 1, "op": "create_chat", "args": {"workspace_id": "w"}}
    protocol_error(await session.ask(create), 1, "no store is connected (the driver is new)")
    protocol_error(await session.ask({"id": 2, "op": "nope", "args": {}}), 2, "unknown op")
    inherited = {"id": 12, "op": "__proto__", "args": {}}
    protocol_error(await session.ask(inherited), 12, "unknown op")
    no_offset = {"id": 3, "op": "connect", "args": {"dsn": dsn}}
    protocol_error(await session.ask(no_offset), 3, "clock_offset")
    assert await session.ask(connect(4, dsn)) == {"id": 4, "ok": None}
    protocol_error(await session.ask(connect(5, dsn)), 5, "already connected")
    install = {"id": 6, "op": "install", "args": {"dsn": dsn}}
    protocol_error(await session.ask(install), 6, "already connected")
    wrong_type = {"id": 7, "op": "create_chat", "args": {"workspace_id": 1}}
    protocol_error(await session.ask(wrong_type), 7, "workspace_id")
    extra = {"id": 8, "op": "create_chat", "args": {"workspace_id": "w", "tenant": "t"}}
    protocol_error(await session.ask(extra), 8, "tenant")
    created = await session.ask({**create, "id": 9})
    assert created["id"] == 9
    assert isinstance(created["ok"], str)
    bad_status = {
        "id": 10,
        "op": "finish_run",
        "args": {"run_id": "r", "status": "done"},
    }
    answer = await session.ask(bad_status)
    assert answer["error"]["kind"] == "InvalidArgument", answer
    assert await session.ask({"id": 11, "op": "close", "args": {}}) == {"id": 11, "ok": None}
    assert await session.exit_status() == 0


async def test_close_abandons_an_operation_blocked_on_a_lock(session, dsn):
    name = "turnproof-worker-blocked"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        assert await session.ask(connect(1, with_params(dsn, application_name=name)))
        chat = (await session.ask({"id": 2, "op": "create_chat", "args": {"workspace_id": "w"}}))[
            "ok"
        ]
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM chats WHERE id = %s FOR UPDATE", (chat,))
            begin = {"chat_id": chat, "workspace_id": "w", "trigger": "user"}
            await session.send({"id": 3, "op": "begin_run", "args": begin})
            await until_waiting_on_a_lock(admin, name)
            assert await session.ask({"id": 4, "op": "close", "args": {}}) == {"id": 4, "ok": None}
            assert await session.exit_status() == 0
        with pytest.raises(anyio.IncompleteRead):  # nothing more: begin_run was abandoned
            await session.stdout.receive_until(b"\n", 1 << 20)


async def test_the_end_of_input_ends_a_connected_worker(session, dsn):
    """The harness is gone (its end of the pipe closed): the worker exits by itself."""
    assert await session.ask(connect(1, dsn)) == {"id": 1, "ok": None}
    assert session.process.stdin is not None
    await session.process.stdin.aclose()
    assert await session.exit_status() == 0


async def test_a_writer_over_the_wire_debounces_on_the_virtual_clock(session, dsn):
    """Protocol 2 by hand: a writer handle, a delta kept back until clock_advance ends its
    window, and a handle that names nothing refused as InvalidArgument."""
    assert await session.ask(connect(1, dsn)) == {"id": 1, "ok": None}
    chat = (await session.ask({"id": 2, "op": "create_chat", "args": {"workspace_id": "w"}}))["ok"]
    shell = {"chat_id": chat, "workspace_id": "w", "turn_id": "t1"}
    message = (await session.ask({"id": 3, "op": "persist_assistant_shell", "args": shell}))["ok"]
    opened = await session.ask(
        {"id": 4, "op": "writer_open", "args": {"debounce": 0.033, "virtual_time": True}}
    )
    writer = opened["ok"]
    assert isinstance(writer, int), opened
    delta = {"message_id": message, "workspace_id": "w", "content": "hi", "parts": []}
    update = {"id": 5, "op": "writer_update", "args": {"writer": writer, **delta}}
    assert await session.ask(update) == {"id": 5, "ok": None}
    get = {"op": "get_message", "args": {"message_id": message, "workspace_id": "w"}}
    assert (await session.ask({"id": 6, **get}))["ok"]["content"] == ""
    assert await session.ask({"id": 7, "op": "clock_advance", "args": {"seconds": 0.033}}) == {
        "id": 7,
        "ok": None,
    }
    flush = {"id": 8, "op": "writer_flush", "args": {"writer": writer, "message_id": message}}
    assert await session.ask(flush) == {"id": 8, "ok": None}
    assert (await session.ask({"id": 9, **get}))["ok"]["content"] == "hi"
    close = {"id": 10, "op": "writer_close", "args": {"writer": writer}}
    assert await session.ask(close) == {"id": 10, "ok": None}
    answer = await session.ask({**close, "id": 11})
    assert answer["error"]["kind"] == "InvalidArgument", answer
    assert await session.ask({"id": 12, "op": "close", "args": {}}) == {"id": 12, "ok": None}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--adapter", "not-registered"], "no adapter registered under that name"),
        (["--adapter", "harness.contract:MESSAGE_STATUSES"], "is not an Adapter"),
        ([], "the following arguments are required: --adapter"),
    ],
)
def test_a_bad_adapter_exits_2_with_one_line(args, says):
    done = subprocess.run(
        [*WORKER[:3], *args], capture_output=True, text=True, timeout=BOUND, check=False
    )
    assert done.returncode == 2
    assert done.stdout == "", "no hello for an adapter that does not load"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert says in lines[-1]
    if args:
        assert len(lines) == 1, done.stderr
