"""The PostgreSQL server crashes: an immediate shutdown (no checkpoint, every connection cut)
and a new start that replays the WAL. What returned True is there afterwards (DUR-1); the
writer's turn stays readable and streaming, its store does not pass its dead connection
off as a refused step, and once stale the sweeps close the message and the run (DUR-3).

The restart is the embedded server's (`restart_postgres`); a run on `--pg-dsn` or Docker
skips these scenarios. Each scenario proves the server really restarted (the postmaster's
start time moved) before it judges: a restart that did not happen is a
ScenarioPremiseError, never a pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import psycopg
import pytest

from harness.db_clock import DatabaseClock
from harness.errors import ScenarioPremiseError
from harness.postgres.databases import with_params

from .support import (
    ACTIVE_RUN_STATUSES,
    STALE_ONLY,
    STEPS,
    ConfirmedWrites,
    append_steps,
    assistant_row,
    describe_error,
    describe_message,
    streaming_turn,
    text_parts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]


async def postmaster_started(dsn: str) -> datetime:
    """When the server's postmaster started, on a connection of its own."""
    probe = with_params(dsn, application_name="turnproof-probe")
    async with await psycopg.AsyncConnection.connect(probe, autocommit=True) as conn:
        cursor = await conn.execute("SELECT pg_postmaster_start_time()")
        row = await cursor.fetchone()
    assert row is not None, "SELECT pg_postmaster_start_time() returned no row"
    return row[0]


async def crash_server(restart: Callable[[], Awaitable[None]], dsn: str) -> None:
    """Restart the server (immediate shutdown), and prove a new postmaster serves now."""
    before = await postmaster_started(dsn)
    await restart()
    after = await postmaster_started(dsn)
    if after <= before:
        raise ScenarioPremiseError(
            f"the server was to restart, but its postmaster still dates from {before.isoformat()} "
            f"(now {after.isoformat()}); no verdict without the crash"
        )


@pytest.mark.requirement("DUR-1c")
@pytest.mark.capability("streaming", "usage")
async def test_what_returned_true_survives_a_server_crash(open_store, turn_dsn, restart_postgres):
    """Steps and a finalize that returned True are all there after the server crashed."""
    writer = await open_store(name="writer")
    writes = await ConfirmedWrites.make(writer)

    await crash_server(restart_postgres, turn_dsn)

    await writes.assert_survived(await open_store(name="reader"), "the server's crash")


@pytest.mark.requirement("DUR-3a", "DUR-3b")
@pytest.mark.capability("streaming", "sweep", "runs")
async def test_a_turn_cut_by_a_server_crash_stays_readable_until_swept(
    open_store, turn_dsn, restart_postgres
):
    """Cut mid-turn by the crash: the steps and the active run are still there, the writer's
    store does not quietly report its next step refused, and once stale the sweeps close
    the message (steps kept) and the run."""
    writer = await open_store(name="writer")
    turn = await streaming_turn(writer)
    run = await writer.begin_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    assert await writer.link_assistant(run_id=run.id, message_id=turn.assistant_message_id), (
        "set-up: link_assistant returned False"
    )
    await append_steps(writer, turn, STEPS[:2])
    assert await writer.record_step(run_id=run.id), "set-up: record_step returned False"

    await crash_server(restart_postgres, turn_dsn)

    reader = await open_store(name="reader")
    before = await assistant_row(reader, turn)
    assert (before.status, before.content) == ("streaming", STEPS[1]), (
        f"expected the finished steps readable after the server's crash ('streaming', "
        f"{STEPS[1]!r}), found {describe_message(before)}"
    )
    active = await reader.latest_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    assert active is not None, f"expected run {run.id!r} after the server's crash, found no run"
    assert (active.id, active.status in ACTIVE_RUN_STATUSES) == (run.id, True), (
        f"expected run {run.id!r} still active after the server's crash, found run "
        f"{active.id!r} {active.status!r}"
    )

    # The writer's connection died with the server. Its next step may raise (the outcome
    # is unknown to it) or, if the store reconnected, apply; never report a refusal.
    try:
        late = await writer.append_step(
            message_id=turn.assistant_message_id,
            workspace_id=turn.workspace_id,
            content=STEPS[2],
            parts=text_parts(STEPS[2]),
        )
    except Exception as exc:
        raised: BaseException | None = exc
    else:
        raised = None
        assert late is True, (
            f"after the server's crash the writer's append_step on its streaming row returned "
            f"{late!r}: a dead connection reported as a refused step (raise, or reconnect "
            "and apply it)"
        )
    current = await assistant_row(reader, turn)
    possible = STEPS[1:] if raised is not None else STEPS[2:]
    outcome = "returned True" if raised is None else f"raised {describe_error(raised)}"
    assert (current.status, current.content) in [("streaming", s) for s in possible], (
        f"the writer's append_step after the crash {outcome}, so the row had to be streaming "
        f"with one of {list(possible)}; it reads {describe_message(current)}"
    )

    clock = await DatabaseClock.connect(with_params(turn_dsn, application_name="turnproof-clock"))
    try:
        await clock.let_pass(STALE_ONLY)
    finally:
        await clock.aclose()
    swept_messages = await reader.sweep_streaming(older_than=STALE_ONLY)
    swept_runs = await reader.sweep_runs(older_than=STALE_ONLY)

    after = await assistant_row(reader, turn)
    assert (after.status, after.content, after.parts) == (
        "aborted",
        current.content,
        current.parts,
    ), (
        f"expected the sweep to close the cut turn's message with its steps kept ('aborted', "
        f"{current.content!r}), found {describe_message(after)}"
    )
    closed = await reader.latest_run(chat_id=turn.chat_id, workspace_id=turn.workspace_id)
    assert closed is not None, f"expected the cut turn's run {run.id!r}, found no run"
    assert (closed.id, closed.status) == (run.id, "aborted"), (
        f"expected the sweep to close the cut turn's run {run.id!r} ('aborted'), found run "
        f"{closed.id!r} {closed.status!r}"
    )
    assert (swept_messages, swept_runs) == (1, 1), (
        f"expected each sweep to close one (1, 1), got {swept_messages} message(s) and "
        f"{swept_runs} run(s)"
    )
