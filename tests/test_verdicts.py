"""Verdicts a CI gate can trust: classification follows the error tree, a hang is named,
an interrupted or partial run never says "conforming", failures explain themselves in JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from harness.conformance_report import (
    ERROR,
    FAIL,
    NOT_REACHED,
    PASS,
    ScenarioOutcome,
    build_report,
)
from harness.requirements import CORE_CAPABILITIES

CLASSIFIED = """
import pytest

from harness.errors import HarnessError, ImplementationFailure
from harness.proxy.errors import WaitTimeout


@pytest.mark.requirement("MSG-1a")
def test_gate_wait_runs_out():
    raise WaitTimeout("gate wait for 'writer' ran out after 5 s")


@pytest.mark.requirement("MSG-2a")
def test_engine_error_inside_a_task_group():
    raise ExceptionGroup("unhandled errors", [HarnessError("the engine lost actor 'step'")])


@pytest.mark.requirement("MSG-3a")
def test_plain_assertion():
    rows = 2
    assert rows == 1, f"expected one assistant row for the turn, found {rows}"


@pytest.mark.requirement("MSG-4a")
def test_race_failure_carries_its_rerun_line():
    raise ImplementationFailure(
        "late step vs finalize: the finalized row was clobbered\\n\\ntranscript:\\n"
        "step finalize: UPDATE ...\\n"
        "rerun: pytest --pyargs 'scenarios.x::test_y' --race-schedule 'finalize,step'"
    )


@pytest.mark.requirement("MSG-5a")
def test_passes():
    pass
"""

HANGING_STEP = """
import anyio
import pytest

from reference_impl import adapter as reference
from reference_impl import schema  # noqa: F401  (SQLAlchemy: imported before install()'s 1 s)


class HangingStep:
    name = "hanging-step"
    capabilities = reference.capabilities

    async def install(self, dsn):
        await reference.install(dsn)

    async def connect(self, dsn, *, clock=None):
        store = await reference.connect(dsn, clock=clock)

        async def append_step(**kwargs):
            await anyio.sleep_forever()

        store.append_step = append_step
        return store


adapter = HangingStep()
"""

ASYNCIO_TEST_MODULE = """import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""
"""The head of an inner test module whose tests are async, on asyncio."""

HANGING_SCENARIOS = (
    "from datetime import timedelta\n"
    + ASYNCIO_TEST_MODULE
    + """

@pytest.mark.requirement("MSG-4a")
@pytest.mark.capability("turns")
async def test_step_on_a_streaming_row(store):
    chat = await store.create_chat(workspace_id="w")
    shell = await store.persist_assistant_shell(chat_id=chat, workspace_id="w", turn_id="t")
    assert await store.append_step(message_id=shell, workspace_id="w", content="x", parts=[])


@pytest.mark.requirement("CW-3a")
@pytest.mark.capability("turns", "streaming", "coalescing")
async def test_flush(store):
    chat = await store.create_chat(workspace_id="w")
    shell = await store.persist_assistant_shell(chat_id=chat, workspace_id="w", turn_id="t")
    writer = await store.writer(timedelta(seconds=60))
    await writer.update(shell, "w", "x", [])
    await writer.flush(shell)
"""
)


def run_json(pytester: pytest.Pytester, dsn: str, *args: str) -> tuple[pytest.RunResult, Any]:
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--pg-dsn",
        dsn,
        "--turnproof-json",
        str(report),
        *args,
        timeout=120,
    )
    assert report.exists(), result.stdout.str() + result.stderr.str()
    return result, json.loads(report.read_text())


def run_interrupted(pytester: pytest.Pytester, dsn: str, module: str) -> tuple[str, Any]:
    """Run `module` against the reference, which must end the run as interrupted; its
    output and report."""
    pytester.makepyfile(test_interrupted=module)
    result, report = run_json(pytester, dsn, "--adapter", "reference")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    assert report["interrupted"] is True, output
    return output, report


def test_classification_follows_the_error_tree(pytester, postgres_server):
    pytester.makepyfile(test_classified=CLASSIFIED)
    result, report = run_json(pytester, postgres_server.admin_dsn)
    statuses = {row["id"]: row["status"] for row in report["rows"]}
    assert statuses["MSG-1"] == ERROR, "a proxy WaitTimeout is the harness's, never a FAIL"
    assert statuses["MSG-2"] == ERROR, "a HarnessError inside an exception group is no verdict"
    assert statuses["MSG-3"] == FAIL
    assert statuses["MSG-4"] == FAIL
    assert statuses["MSG-5"] == PASS
    assert result.ret == 1
    failures = {f["scenario"].split("::")[1]: f for f in report["failures"]}
    assert failures["test_gate_wait_runs_out"]["reason"] == (
        "WaitTimeout: gate wait for 'writer' ran out after 5 s"
    )
    assert failures["test_plain_assertion"]["reason"] == (
        "AssertionError: expected one assistant row for the turn, found 2"
    )
    race = failures["test_race_failure_carries_its_rerun_line"]
    assert race["reason"] == (
        "ImplementationFailure: late step vs finalize: the finalized row was clobbered"
    )
    assert race["rerun"] == (
        "pytest --pyargs 'scenarios.x::test_y' --race-schedule 'finalize,step'"
    )
    assert race["requirements"] == ["MSG-4"]
    assert failures["test_plain_assertion"]["rerun"] == ""


@pytest.mark.parametrize(
    ("scenario", "says"),
    [
        ("test_step_on_a_streaming_row", "hanging-step': append_step(message_id="),
        ("test_flush", "hanging-step': flush("),
    ],
    ids=["store-operation", "writer-operation"],
)
def test_a_hanging_operation_fails_its_test_naming_it(pytester, postgres_server, scenario, says):
    """A store's operations and its streaming writers' are bounded alike (the writer's flush
    hangs in the store's append_step, which it calls past the bound)."""
    pytester.makepyfile(hanging_step=HANGING_STEP, test_scenarios=HANGING_SCENARIOS)
    pytester.syspathinsert()
    result, report = run_json(
        pytester,
        postgres_server.admin_dsn,
        "--adapter",
        "hanging_step:adapter",
        "--operation-timeout",
        "1",
        f"test_scenarios.py::{scenario}",
    )
    (failure,) = report["failures"]
    assert failure["outcome"] == FAIL
    assert failure["reason"].startswith(f"OperationTimeout: adapter '{says}"), failure["reason"]
    assert "did not return within 1 s" in failure["reason"]
    assert result.ret == 1


INTERRUPTED_FIXTURE = """
import asyncio
import signal

import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def half_set_up():
    # Ctrl-C as the loop runs, while this set-up is suspended at its next await
    asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGINT)
    await anyio.sleep(0)
    print("SET UP")
    yield
    print("TORN DOWN")


@pytest.mark.requirement("MSG-1a")
async def test_interrupted_in_its_set_up(half_set_up):
    print("RAN")


@pytest.mark.requirement("MSG-1a")
async def test_never_reached():
    print("RAN TOO")
"""


def test_ctrl_c_in_a_fixtures_set_up_stops_the_run_after_that_set_up(pytester, postgres_server):
    """anyio's runner would leave the set-up suspended and resume it during the session's
    clean-up, after the run had reported itself interrupted: a half-made fixture that is
    never torn down (in a real run, a connection's KeyboardInterrupt escaping as a
    traceback). Held until the set-up is over, the interrupt stops the run cleanly."""
    pytester.makepyfile(test_interrupted=INTERRUPTED_FIXTURE)
    result, report = run_json(pytester, postgres_server.admin_dsn, "-s", "--adapter", "reference")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    assert report["interrupted"] is True, output
    assert re.findall(r"SET UP|TORN DOWN|RAN", result.stdout.str()) == ["SET UP", "TORN DOWN"], (
        output
    )
    assert "Traceback" not in output, output


INTERRUPTED_WHERE_NO_LINE_IS = """
import sys
import types

import pytest


def frame_and_instruction_without_a_line():
    try:
        pass
    finally:
        pass
    frame = sys._getframe()
    return frame, next(s for s, _, line in frame.f_code.co_lines() if line is None)


@pytest.mark.requirement("MSG-1a")
def test_interrupted():
    frame, instruction = frame_and_instruction_without_a_line()
    where = types.TracebackType(None, frame, instruction, -1)
    assert where.tb_lineno is None
    raise KeyboardInterrupt().with_traceback(where)
"""


def test_an_interrupt_at_an_instruction_without_a_line_number_still_ends_as_interrupted(
    pytester, postgres_server
):
    """Python 3.11 can interrupt a frame where its traceback then has no line number (seen
    with SIGTERM in CI); pytest's own report of the interrupt raised TypeError on it, and
    the run ended with a traceback and exit 1."""
    output, _ = run_interrupted(pytester, postgres_server.admin_dsn, INTERRUPTED_WHERE_NO_LINE_IS)
    assert "TypeError" not in output, output
    assert "KeyboardInterrupt" in output, output


INTERRUPTED_INSIDE_ITS_TASK = (
    ASYNCIO_TEST_MODULE
    + """

@pytest.mark.requirement("MSG-1a")
async def test_interrupted(store):
    await store.create_chat(workspace_id="w")
    raise KeyboardInterrupt  # inside the test's own task, as a Ctrl-C there would be
"""
)


def test_an_async_test_interrupted_inside_its_task_ends_the_run_as_interrupted(
    pytester, postgres_server
):
    """anyio's runner left the test's call waiting with its wake-up queued, and tearing
    down the store fixture raised the interrupt again, out of the run (exit 1)."""
    output, _ = run_interrupted(pytester, postgres_server.admin_dsn, INTERRUPTED_INSIDE_ITS_TASK)
    assert "Traceback" not in output, output


INTERRUPTED_IN_A_TASK_GROUP = (
    "import anyio\n"
    + ASYNCIO_TEST_MODULE
    + """

async def pressed():
    raise KeyboardInterrupt  # inside a task of a group, as a race's actors run


@pytest.mark.requirement("MSG-1a")
async def test_interrupted(store):
    async with anyio.create_task_group() as group:
        group.start_soon(pressed)
"""
)


def test_an_interrupt_inside_a_task_group_stops_the_run_and_fails_nothing(
    pytester, postgres_server
):
    """The group wraps the KeyboardInterrupt: it was scored as the test's failure, a FAIL
    the implementation never earned, and the run went on."""
    output, report = run_interrupted(
        pytester, postgres_server.admin_dsn, INTERRUPTED_IN_A_TASK_GROUP
    )
    assert [s["outcome"] for s in report["scenarios"]] == [], output


DROPPED_INTERRUPT = """
import signal

import pytest


class PressedInADestructor:
    def __del__(self):
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)  # a Ctrl-C landing here: Python drops its exception


@pytest.mark.requirement("MSG-1a")
def test_first():
    PressedInADestructor()


@pytest.mark.requirement("MSG-1a")
def test_second():
    pass
"""


def test_a_ctrl_c_whose_exception_python_dropped_still_stops_the_run(pytester, postgres_server):
    """A KeyboardInterrupt raised in a destructor or a gc callback (seen in Hypothesis's)
    is dropped by Python; the run went on to the end and passed."""
    output, report = run_interrupted(pytester, postgres_server.admin_dsn, DROPPED_INTERRUPT)
    assert "test_second" not in {s["nodeid"].split("::")[-1] for s in report["scenarios"]}, output


def outcome(requirement_id: str, result: str) -> ScenarioOutcome:
    return ScenarioOutcome(f"scenarios.x::test_{requirement_id}", (requirement_id,), result)


def report_of(outcomes: list[ScenarioOutcome], **kwargs: Any):
    return build_report(
        outcomes,
        adapter_name="reference",
        adapter_spec="reference",
        capabilities=frozenset(CORE_CAPABILITIES),
        postgres="test",
        **kwargs,
    )


def test_interrupted_run_is_incomplete_and_names_what_was_not_reached():
    report = report_of(
        [outcome("MSG-1", PASS)],
        complete_run=False,
        interrupted=True,
        selected={"MSG-1", "MSG-2", "RUN-1"},
    )
    rows = {row.id: row for row in report.rows}
    assert rows["MSG-2"].status == NOT_REACHED
    assert rows["RUN-1"].status == NOT_REACHED
    assert rows["MSG-3"].reason == "no scenario of it was selected"
    assert report.verdict.ok is False
    assert report.verdict.conforming is False
    assert report.verdict.line.startswith("INCOMPLETE: the run was interrupted")
    assert "MSG-2, RUN-1" in report.verdict.line


def test_partial_selection_never_says_conforming():
    report = report_of([outcome("MSG-1", PASS)], complete_run=False, selected={"MSG-1"})
    assert report.verdict.ok is True
    assert report.verdict.conforming is False
    assert "conforming" not in report.verdict.line
    assert report.verdict.line.startswith("PASS (partial selection)")
