"""DriverAdapter against real driver processes: the Python worker on the real PostgreSQL,
and drivers that break the protocol in each way a driver can. Whatever a driver does,
the harness answers with a clear error within a bound, and leaves no process behind."""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
import psycopg
import pytest

from harness import InvalidArgument, RunAlreadyActive, UsageIn
from harness.adapter_loading import assert_store, load_adapter
from harness.contract import (
    STORE_OPERATIONS,
    WRITER_OPERATIONS,
    RealTimers,
    StreamWriter,
    TurnStore,
)
from harness.driver import (
    DriverAdapter,
    DriverError,
    DriverExited,
    DriverIndefiniteError,
    DriverOperationError,
    DriverProtocolError,
    DriverStartError,
    DriverStore,
    DriverTimeout,
)
from harness.driver.client import DriverWriter
from harness.errors import HarnessError, ImplementationFailure, TurnproofError, UsageError
from harness.postgres.databases import DatabaseFactory, with_params
from harness.virtual_time import VirtualClock
from tests.driver_helpers import (
    BOUND,
    WORKER,
    alive,
    children,
    descendants,
    misbehaving,
    node_driver_command,
    parents,
    until_waiting_on_a_lock,
)

pytestmark = pytest.mark.anyio

USAGE = UsageIn(
    prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_micros=2**40, model="m"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def dsn(databases: DatabaseFactory) -> Iterator[str]:
    dsn = databases.create()
    yield dsn
    databases.drop(dsn)


@pytest.fixture(scope="module")
def worker() -> Iterator[DriverAdapter]:
    adapter = DriverAdapter(WORKER)
    yield adapter
    adapter.close()


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        yield conn


async def test_every_operation_round_trips_through_the_worker(worker, dsn):
    """Each result read through the driver equals the in-process reference's, to the
    microsecond of every timestamp."""
    store = assert_store(await worker.connect(dsn), worker.name)
    direct = await load_adapter("reference").connect(dsn)
    called: list[str] = []

    async def call(op: str, **kwargs: Any) -> Any:
        called.append(op)
        return await getattr(store, op)(**kwargs)

    try:
        ws = "ws-1"
        chat = await call("create_chat", workspace_id=ws)
        legacy = await call("insert_legacy_message", chat_id=chat, workspace_id=ws, content="o")
        user = await call("persist_user_turn", chat_id=chat, workspace_id=ws, turn_id="t", text="q")
        again = await call(
            "persist_user_turn", chat_id=chat, workspace_id=ws, turn_id="t", text="other"
        )
        assert again == user
        no_turn = await call(
            "persist_user_turn", chat_id=chat, workspace_id=ws, turn_id=None, text=""
        )
        assert no_turn is None
        shell = await call("persist_assistant_shell", chat_id=chat, workspace_id=ws, turn_id="t")
        parts = [{"type": "text", "text": "héllo ✓"}, {"type": "tool-call", "args": {"n": 1.5}}]
        assert await call(
            "append_step", message_id=shell, workspace_id=ws, content="héllo", parts=parts
        )
        streaming = await call("get_message", message_id=shell, workspace_id=ws)
        assert streaming == await direct.get_message(message_id=shell, workspace_id=ws)
        assert streaming.parts == parts
        assert streaming.updated_at.tzinfo is not None
        assert await call("sweep_streaming", older_than=timedelta(hours=1)) == 0
        run = await call("begin_run", chat_id=chat, workspace_id=ws)
        assert run == await direct.latest_run(chat_id=chat, workspace_id=ws)
        assert await call("link_assistant", run_id=run.id, message_id=shell)
        assert await call("record_step", run_id=run.id)
        assert await call("request_stop", run_id=run.id)
        latest = await call("latest_run", chat_id=chat, workspace_id=ws)
        assert (latest.assistant_message_id, latest.step_count, latest.stop_requested) == (
            shell,
            1,
            True,
        )
        assert await call(
            "finalize",
            message_id=shell,
            workspace_id=ws,
            status="completed",
            content="done",
            parts=[],
            usage=USAGE,
        )
        usage = await call("usage_for", message_id=shell)
        assert usage == await direct.usage_for(message_id=shell)
        assert (usage[0].cost_micros, usage[0].created_at.tzinfo is not None) == (2**40, True)
        assert await call("finish_run", run_id=run.id, status="succeeded")
        assert await call("sweep_runs", older_than=timedelta(0)) == 0
        messages = await call("list_messages", chat_id=chat, workspace_id=ws)
        assert messages == await direct.list_messages(chat_id=chat, workspace_id=ws)
        assert [m.id for m in messages] == [legacy, user, shell]
        assert await call("get_message", message_id=shell, workspace_id="other-ws") is None
    finally:
        await store.aclose()
        await direct.aclose()
    assert set(called) == set(STORE_OPERATIONS)


async def test_contract_errors_cross_as_the_contracts_exceptions(worker, dsn):
    store = await worker.connect(dsn)
    try:
        chat = await store.create_chat(workspace_id="w")
        await store.begin_run(chat_id=chat, workspace_id="w")
        with pytest.raises(RunAlreadyActive) as conflict:
            await store.begin_run(chat_id=chat, workspace_id="w")
        assert conflict.value.chat_id == chat
        with pytest.raises(InvalidArgument, match="finalize status"):
            await store.finalize(
                message_id="m", workspace_id="w", status="done", content="", parts=[], usage=None
            )
        with pytest.raises(InvalidArgument):
            await store.begin_run(chat_id="no-such-chat", workspace_id="w")
        with pytest.raises(InvalidArgument, match="NUL") as refused:  # MSG-10d
            await store.create_chat(workspace_id="nul\x00")
        assert not isinstance(refused.value, ConnectionError), "a definite error, not indefinite"
        assert await store.create_chat(workspace_id="w"), "the store is usable after errors"
    finally:
        await store.aclose()


async def test_a_lost_connection_is_an_indefinite_error(worker, dsn, admin):
    name = "turnproof-driver-lost"
    store = await worker.connect(with_params(dsn, application_name=name))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        with pytest.raises(DriverIndefiniteError) as lost:
            await store.create_chat(workspace_id="w")
        assert isinstance(lost.value, ConnectionError), "the race engine counts it as unknown"
    finally:
        await store.aclose()


async def test_a_killed_worker_fails_its_operation_and_every_later_one(worker, dsn, admin):
    name = "turnproof-driver-killed"
    store = await worker.connect(with_params(dsn, application_name=name))
    turn_chat = await store.create_chat(workspace_id="w")
    shell = await store.persist_assistant_shell(chat_id=turn_chat, workspace_id="w", turn_id="t")
    pid = store.worker_pid
    failure: list[BaseException] = []

    async def step() -> None:
        try:
            await store.append_step(message_id=shell, workspace_id="w", content="x", parts=[])
        except DriverError as exc:
            failure.append(exc)

    with anyio.fail_after(BOUND):
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (shell,))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(step)
                await until_waiting_on_a_lock(admin, name)
                os.kill(pid, signal.SIGKILL)
        (error,) = failure
        assert isinstance(error, DriverExited)
        assert isinstance(error, ConnectionError), "its outcome is unknown to the harness"
        text = str(error)
        assert f"(pid {pid}) was killed by SIGKILL" in text
        assert f"in flight: append_step(message_id={shell!r}" in text
        with pytest.raises(DriverExited, match="is gone, get_message not sent"):
            await store.get_message(message_id=shell, workspace_id="w")
        await store.aclose()
    assert not alive(pid)
    reader = await load_adapter("reference").connect(dsn)
    message = await reader.get_message(message_id=shell, workspace_id="w")
    await reader.aclose()
    assert message is not None
    # The statement had reached PostgreSQL: it may still commit once the lock is gone (the
    # outcome was unknown to the harness), but only whole.
    assert (message.status, message.content) in {("streaming", ""), ("streaming", "x")}


async def test_a_cancelled_operation_leaves_the_store_usable(worker, dsn, admin):
    """The answer to an operation the caller gave up on arrives later and is dropped."""
    name = "turnproof-driver-cancelled"
    store = await worker.connect(with_params(dsn, application_name=name))
    try:
        chat = await store.create_chat(workspace_id="w")
        with anyio.fail_after(BOUND):
            async with admin.transaction():
                await admin.execute("SELECT 1 FROM chats WHERE id = %s FOR UPDATE", (chat,))
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(partial(store.begin_run, chat_id=chat, workspace_id="w"))
                    await until_waiting_on_a_lock(admin, name)
                    tasks.cancel_scope.cancel()
            # the abandoned begin_run now completes in the worker; its answer is skipped
            latest = await store.latest_run(chat_id=chat, workspace_id="w")
        assert latest is not None, "the abandoned begin_run ran before latest_run"
        assert latest.chat_id == chat
        assert await store.create_chat(workspace_id="w2")
    finally:
        await store.aclose()


async def test_concurrent_operations_get_their_own_answers_in_any_order():
    adapter = DriverAdapter(misbehaving("reverse"), spares=0)
    store = await adapter.connect("dbname=unused")
    try:
        results: dict[str, str] = {}

        async def chat(ws: str) -> None:
            results[ws] = await store.create_chat(workspace_id=ws)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(chat, "a")
                tasks.start_soon(chat, "b")
        assert results == {"a": "chat-of-a", "b": "chat-of-b"}
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("mode", "error", "says"),
    [
        ("garbage", DriverProtocolError, ["not a JSON line", "this is not a protocol line"]),
        ("exit", DriverExited, ["exited with status 3", "about to fall over"]),
        ("fatal", DriverExited, ["reported a fatal error: the disk is on fire"]),
        ("wrong-type", DriverProtocolError, ["create_chat result: expected a string, got 42"]),
        ("unknown-id", DriverProtocolError, ["an answer to id 1002, which is not in flight"]),
        ("null-id", DriverProtocolError, ["could not read a request of ours: unreadable"]),
        ("hang", DriverTimeout, ["gave no answer to create_chat within 1 s; killed it"]),
    ],
)
async def test_a_driver_that_breaks_the_protocol_is_killed_and_explained(mode, error, says):
    adapter = DriverAdapter(misbehaving(mode), timeout=1.0, spares=0)
    store = await adapter.connect("dbname=unused")
    pid = store.worker_pid
    with anyio.fail_after(BOUND):
        with pytest.raises(error) as raised:
            await store.create_chat(workspace_id="w")
        text = str(raised.value)
        for fragment in [f"(pid {pid})", "in flight: create_chat(workspace_id='w')", *says]:
            assert fragment in text
        assert "got create_chat" in text, "the message ends with the driver's stderr"
        assert not alive(pid), "the driver was killed and reaped"
        with pytest.raises(error, match="is gone, record_step not sent"):
            await store.record_step(run_id="r")
        await store.aclose()


async def test_an_error_of_kind_other_keeps_the_driver():
    adapter = DriverAdapter(misbehaving("other-error"), spares=0)
    store = await adapter.connect("dbname=unused")
    try:
        for _ in range(2):
            with pytest.raises(DriverOperationError, match="disk full"):
                await store.create_chat(workspace_id="w")
        assert alive(store.worker_pid)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["no-such-driver-binary"], "cannot start it: [Errno 2] No such file or directory"),
        (
            misbehaving("no-hello"),
            "exited with status 1 without a hello; its stderr ends: cannot load libturnstore.so",
        ),
        (misbehaving("bad-hello"), "its first line is not a hello (not a JSON line"),
        (
            misbehaving("hello-v3"),
            "speaks driver protocol version 3, this harness speaks versions 1, 2",
        ),
        (
            misbehaving("v1-coalescing"),
            "declares `coalescing` in driver protocol version 1; the streaming writer needs "
            "version 2",
        ),
        (misbehaving("unknown-capability"), "it declared ['turns', 'teleport']"),
        (misbehaving("silent"), "did not say hello and exit within 1 s of an empty input"),
        (
            [*WORKER[:-1], "no_such_module:adapter"],
            "exited with status 2 without a hello; its stderr ends: turnproof worker: "
            "--adapter 'no_such_module:adapter': module 'no_such_module' cannot be imported",
        ),
    ],
)
def test_a_driver_that_does_not_start_is_one_clear_line(command, says):
    with pytest.raises(DriverStartError) as raised:
        DriverAdapter(command, timeout=1.0)
    text = str(raised.value)
    assert says in text
    assert text.startswith("--adapter-cmd ")
    assert "\n" not in text


@pytest.mark.parametrize("driver", ["forked-python-worker", "started-node-driver"])
async def test_no_driver_process_outlives_its_store_or_its_adapter(dsn, driver):
    command = WORKER if driver == "forked-python-worker" else node_driver_command()
    before = descendants()
    adapter = DriverAdapter(command, spares=2)
    stores = [await adapter.connect(dsn) for _ in range(3)]
    pids = {s.worker_pid for s in stores}
    spares = {pid for pid in descendants(since=before) - pids if not children(pid)}  # no server
    assert len(spares) == 2, "two spares wait, started ahead of need"
    for store in stores:
        await store.aclose()
    assert not any(alive(pid) for pid in pids), "a store's process ends with the store"
    adapter.close()
    assert descendants(since=before) == set(), "closing the adapter ends its spares and server"


async def test_python_workers_are_forks_of_one_server_which_reports_how_they_ended(dsn):
    """The worker's own command, run by this interpreter, is forked from a server that
    imported the adapter once; only that server learns how a worker ended, and says."""
    adapter = DriverAdapter(WORKER, spares=0)
    stores = [await adapter.connect(dsn) for _ in range(2)]
    try:
        servers = {parents()[store.worker_pid] for store in stores}
        assert len(servers) == 1, "one server forked both workers"
        assert servers <= children(), "the server is the harness's child, the workers are not"
        os.kill(stores[0].worker_pid, signal.SIGTERM)
        with pytest.raises(DriverExited, match="was killed by SIGTERM"):
            await stores[0].create_chat(workspace_id="w")
        assert await stores[1].create_chat(workspace_id="w"), "the other worker still serves"
    finally:
        for store in stores:
            await store.aclose()
        adapter.close()
    assert not any(alive(pid) for pid in servers), "closing the adapter ends its server"


async def test_a_dead_fork_server_leaves_its_workers_killable_and_says_so_at_the_next_start(
    dsn,
):
    """Its workers keep their pipes to the harness; only their exit status is lost, and
    a worker it cannot start is the harness's error, never the implementation's."""
    adapter = DriverAdapter(WORKER, spares=0)
    store = await adapter.connect(dsn)
    try:
        os.kill(parents()[store.worker_pid], signal.SIGKILL)
        assert await store.create_chat(workspace_id="w"), "the worker still serves"
        with anyio.fail_after(BOUND):
            await store.kill()
        assert not alive(store.worker_pid)
        with pytest.raises(HarnessError, match="fork server"):
            await adapter.connect(dsn)
    finally:
        await store.aclose()
        adapter.close()


THREAD_ON_IMPORT = """
import threading

from reference_impl.adapter import ReferenceAdapter

threading.Thread(target=threading.Event().wait, daemon=True).start()  # a fork lacks it
adapter = ReferenceAdapter(name="thread-on-import")
"""


async def test_an_adapter_that_starts_a_thread_on_import_gets_started_workers(
    tmp_path, monkeypatch, dsn
):
    (tmp_path / "thread_on_import.py").write_text(THREAD_ON_IMPORT)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    adapter = DriverAdapter([*WORKER[:-1], "thread_on_import:adapter"], spares=0)
    store = await adapter.connect(dsn)
    try:
        assert parents()[store.worker_pid] == os.getpid(), "started by the harness, not forked"
        assert await store.create_chat(workspace_id="w")
    finally:
        await store.aclose()
        adapter.close()


async def test_the_clock_offset_reaches_the_worker(tmp_path, monkeypatch, dsn):
    (tmp_path / "clock_echo.py").write_text(CLOCK_ECHO)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    adapter = DriverAdapter([*WORKER[:-1], "clock_echo:adapter"], spares=0)
    ahead = await adapter.connect(dsn, clock=lambda: datetime.now(UTC) + timedelta(minutes=10))
    real = await adapter.connect(dsn)
    try:
        reading = datetime.fromisoformat(await ahead.create_chat(workspace_id="w"))
        offset = reading - datetime.now(UTC)
        assert timedelta(minutes=9) < offset <= timedelta(minutes=10)
        assert await real.create_chat(workspace_id="w") == "no clock"
    finally:
        await ahead.aclose()
        await real.aclose()


CLOCK_ECHO = """
from reference_impl.adapter import ReferenceAdapter
from reference_impl.store import PgTurnStore


class ClockEcho(PgTurnStore):
    async def create_chat(self, *, workspace_id):
        return self.clock().isoformat() if self.clock else "no clock"


adapter = ReferenceAdapter(name="clock-echo", store_class=ClockEcho)
"""


def test_the_store_has_every_contract_operation_with_its_signature():
    for op in STORE_OPERATIONS:
        method = getattr(DriverStore, op)
        assert inspect.iscoroutinefunction(method)
        assert inspect.signature(method) == inspect.signature(getattr(TurnStore, op))


def test_the_writer_has_every_writer_operation_with_its_signature():
    for op in (*WRITER_OPERATIONS, "aclose"):
        method = getattr(DriverWriter, op)
        assert inspect.iscoroutinefunction(method)
        assert inspect.signature(method) == inspect.signature(getattr(StreamWriter, op))


def test_driver_errors_sit_in_the_error_tree_by_who_is_at_fault():
    """The user's set-up is a UsageError; a driver that dies, hangs or breaks the protocol
    is the implementation's fault; its own errors are carried across as they are."""
    assert issubclass(DriverStartError, UsageError)
    for kind in (DriverExited, DriverTimeout, DriverProtocolError):
        assert issubclass(kind, DriverError)
        assert issubclass(kind, ImplementationFailure)
    assert issubclass(DriverExited, ConnectionError)
    assert issubclass(DriverTimeout, TimeoutError)
    assert issubclass(DriverOperationError, TurnproofError)
    assert not issubclass(DriverOperationError, (HarnessError, ImplementationFailure))
    assert issubclass(DriverIndefiniteError, ConnectionError)


async def test_a_version_1_driver_is_served_but_has_no_writer():
    adapter = DriverAdapter(misbehaving("reverse"), spares=0)
    assert adapter.hello.protocol == 1
    store = await adapter.connect("dbname=unused")
    try:
        with pytest.raises(HarnessError, match="did not declare `coalescing`"):
            await store.writer(timedelta(milliseconds=33))
    finally:
        await store.aclose()


async def test_a_driver_writer_takes_real_time_or_a_virtual_clock_only(dsn):
    adapter = DriverAdapter(WORKER, spares=0)
    store = await adapter.connect(dsn)
    try:
        with pytest.raises(UsageError, match="real time or on a VirtualClock"):
            await store.writer(timedelta(milliseconds=33), timers=RealTimers())
        first, second = VirtualClock(), VirtualClock()
        writer = await store.writer(timedelta(milliseconds=33), timers=first)
        with pytest.raises(HarnessError, match="one virtual clock"):
            await store.writer(timedelta(milliseconds=33), timers=second)
        await writer.aclose()
        await (await store.writer(timedelta(milliseconds=33), timers=second)).aclose()
    finally:
        await store.aclose()
