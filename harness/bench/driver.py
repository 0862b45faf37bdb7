"""Per-operation overhead of running an adapter behind the driver protocol (not a test):
the same operations on the same database, in-process and through a driver process.

    turnproof bench driver [--adapter SPEC] [--adapter-cmd CMD] [--rounds N] [--dsn DSN]

By default the driver is `python -m harness.worker --adapter SPEC`, so the difference
is the protocol alone: a JSON line each way and two process hops. Both paths are
measured in the same run, interleaved round by round, so machine noise hits both.
Without --dsn it measures against the harness's own PostgreSQL (embedded by default).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio

from harness.adapter_loading import load_adapter
from harness.contract import Adapter, TurnStore
from harness.driver.client import DriverAdapter
from harness.postgres.databases import DatabaseFactory
from harness.postgres.resolver import start_postgres

Operation = Callable[[TurnStore, dict[str, str]], Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "get_message": lambda s, t: s.get_message(message_id=t["message"], workspace_id="bench"),
    "append_step": lambda s, t: s.append_step(
        message_id=t["message"],
        workspace_id="bench",
        content="a step of the answer",
        parts=[{"type": "text", "text": "a step of the answer"}],
    ),
    "list_messages": lambda s, t: s.list_messages(chat_id=t["chat"], workspace_id="bench"),
    "record_step": lambda s, t: s.record_step(run_id=t["run"]),
    "sweep_streaming": lambda s, t: s.sweep_streaming(older_than=timedelta(hours=1)),
}
"""Reads and writes of different result sizes; none of them changes what the next reads."""


async def _turn(store: TurnStore) -> dict[str, str]:
    chat = await store.create_chat(workspace_id="bench")
    await store.persist_user_turn(chat_id=chat, workspace_id="bench", turn_id="t", text="q")
    message = await store.persist_assistant_shell(chat_id=chat, workspace_id="bench", turn_id="t")
    assert message is not None
    run = await store.begin_run(chat_id=chat, workspace_id="bench")
    return {"chat": chat, "message": message, "run": run.id}


async def measure(
    direct: Adapter, driver: DriverAdapter, dsn: str, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median seconds per operation: (in-process, through the driver)."""
    stores = {"direct": await direct.connect(dsn), "driver": await driver.connect(dsn)}
    try:
        turns = {path: await _turn(store) for path, store in stores.items()}
        times: dict[tuple[str, str], list[float]] = {}
        for round_ in range(rounds + rounds // 10):
            for name, operation in OPERATIONS.items():
                for path, store in stores.items():
                    start = time.perf_counter()
                    await operation(store, turns[path])
                    elapsed = time.perf_counter() - start
                    if round_ >= rounds // 10:  # the first tenth warms both paths up
                        times.setdefault((name, path), []).append(elapsed)
    finally:
        for store in stores.values():
            await store.aclose()
    return {
        name: (
            statistics.median(times[name, "direct"]),
            statistics.median(times[name, "driver"]),
        )
        for name in OPERATIONS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnproof bench driver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--adapter", default="reference", help="the in-process adapter")
    parser.add_argument(
        "--adapter-cmd",
        help="the driver to compare with (default: python -m harness.worker --adapter SPEC)",
    )
    parser.add_argument("--rounds", type=int, default=1000, help="calls per operation and path")
    parser.add_argument("--dsn", help="PostgreSQL to measure against (default: embedded)")
    args = parser.parse_args(argv)
    command = args.adapter_cmd or f"python -m harness.worker --adapter {args.adapter}"
    direct = load_adapter(args.adapter)
    driver = DriverAdapter(shlex.split(command), spares=0)
    server = start_postgres("auto", args.dsn, log=print)
    factory = DatabaseFactory(server.admin_dsn)
    try:
        factory.prepare_template(direct.install)
        results = anyio.run(measure, direct, driver, factory.create(), args.rounds)
    finally:
        factory.close()
        server.stop()
        driver.close()
    print(f"median per operation, {args.rounds} calls per path ({server.description})")
    print(f"  in-process: adapter {args.adapter!r}; driver: {command}")
    print(f"  {'operation':<16}{'in-process':>12}{'driver':>12}{'added':>12}")
    added = []
    for name, (alone, behind) in results.items():
        added.append(behind - alone)
        print(
            f"  {name:<16}{alone * 1000:>9.3f} ms{behind * 1000:>9.3f} ms"
            f"{(behind - alone) * 1000:>9.3f} ms"
        )
    print(f"  median added per operation: {statistics.median(added) * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
