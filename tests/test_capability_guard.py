"""The capability guard on a real reference store: what a scenario may call, and what not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from harness.adapter_loading import load_adapter
from harness.capability_guard import CapabilityViolation, guard_store
from harness.contract import STORE_OPERATIONS, TurnStore, UsageIn
from harness.driver import DriverAdapter, DriverExited
from harness.errors import HarnessError
from harness.postgres.databases import DatabaseFactory
from harness.requirements import CAPABILITIES, OPERATION_CAPABILITIES

pytestmark = pytest.mark.anyio

SCENARIO = "scenarios.test_usage::test_example"
USAGE = UsageIn(prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_micros=4, model="model")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def dsn(databases: DatabaseFactory) -> Iterator[str]:
    dsn = databases.create()
    yield dsn
    databases.drop(dsn)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[TurnStore]:
    store = await load_adapter("reference").connect(dsn)
    yield store
    await store.aclose()


def test_every_contract_operation_belongs_to_a_known_capability():
    """The table covers the contract: an operation missing from it would pass unguarded."""
    assert set(STORE_OPERATIONS) <= set(OPERATION_CAPABILITIES), (
        f"operations without a capability: {set(STORE_OPERATIONS) - set(OPERATION_CAPABILITIES)}"
    )
    unknown = {op: caps for op, caps in OPERATION_CAPABILITIES.items() if not caps <= CAPABILITIES}
    assert unknown == {}, f"operations mapped to unknown capabilities: {unknown}"


async def test_an_undeclared_operation_is_a_harness_error_naming_scenario_and_capability(store):
    guarded = guard_store(store, allowed=frozenset({"turns", "usage"}), scenario=SCENARIO)
    with pytest.raises(CapabilityViolation) as raised:
        await guarded.append_step(message_id="m", workspace_id="w", content="c", parts=[])
    assert isinstance(raised.value, HarnessError), "a violation must be no verdict, not a FAIL"
    assert not isinstance(raised.value, AssertionError), "a violation must never count as a FAIL"
    says = str(raised.value)
    for words in (SCENARIO, "append_step", "'streaming'", "'turns', 'usage'"):
        assert words in says, f"the violation does not mention {words}: {says}"


async def test_allowed_operations_reach_the_store(store):
    guarded = guard_store(store, allowed=frozenset({"turns", "usage"}), scenario=SCENARIO)
    chat = await guarded.create_chat(workspace_id="ws-guard")
    shell = await guarded.persist_assistant_shell(
        chat_id=chat, workspace_id="ws-guard", turn_id="t"
    )
    assert shell is not None, "persist_assistant_shell through the guard returned None"
    done = await guarded.finalize(
        message_id=shell,
        workspace_id="ws-guard",
        status="completed",
        content="answer",
        parts=[],
        usage=USAGE,
    )
    assert done is True, "finalize with usage (a `usage` operation) did not reach the store"
    rows = await guarded.usage_for(message_id=shell)
    assert [r.total_tokens for r in rows] == [3], f"expected the one usage row, found {rows}"


async def test_finalize_with_usage_needs_the_usage_capability(store):
    """`streaming` alone may finalize, but passing usage is `usage`'s to check."""
    guarded = guard_store(store, allowed=frozenset({"turns", "streaming"}), scenario=SCENARIO)
    chat = await guarded.create_chat(workspace_id="ws-guard")
    shell = await guarded.persist_assistant_shell(
        chat_id=chat, workspace_id="ws-guard", turn_id="t2"
    )
    assert shell is not None
    finalize = {"message_id": shell, "workspace_id": "ws-guard", "status": "completed"}
    with pytest.raises(CapabilityViolation, match=r"finalize\(usage=\.\.\.\)"):
        guarded.finalize(**finalize, content="x", parts=[], usage=USAGE)
    assert await guarded.finalize(**finalize, content="x", parts=[], usage=None) is True
    with pytest.raises(CapabilityViolation, match="usage_for"):
        guarded.usage_for(message_id=shell)


async def test_workspaces_alone_grants_no_operation(store):
    """WS-1 scenarios declare the capabilities of the operations they use."""
    guarded = guard_store(store, allowed=frozenset({"workspaces"}), scenario=SCENARIO)
    with pytest.raises(CapabilityViolation, match="create_chat"):
        guarded.create_chat(workspace_id="ws-guard")


async def test_non_contract_attributes_are_forwarded(dsn):
    """A guarded store in a process of its own can still be killed (and closed)."""
    adapter = DriverAdapter.python_worker("reference")
    try:
        worker = await adapter.connect(dsn)
        guarded = guard_store(worker, allowed=frozenset({"turns"}), scenario=SCENARIO)
        assert guarded.worker_pid == worker.worker_pid
        await guarded.kill()
        with pytest.raises(DriverExited):
            await guarded.list_messages(chat_id="after-the-kill", workspace_id="w")
        await guarded.aclose()
    finally:
        adapter.close()
