"""Figures for the race engine (not a test): its speed, and why it exists.

    turnproof bench race [--dsn DSN] [--naive-runs 200] [--explorations 20]

1. Interleavings per second, each on a fresh database (statement level, the
   reference, the late-step-vs-finalize race), and where each one's time goes
   (clone, connect, set-up, schedule, check, close).
2. How often the late-update bug of the read-then-write variant shows up in a
   naive concurrent test (the same two operations in two tasks, no gating),
   next to how often the engine catches it, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import anyio

from harness.adapter_loading import load_adapter
from harness.contract import Adapter
from harness.postgres.databases import DatabaseFactory, with_params
from harness.postgres.resolver import start_postgres
from harness.proxy.server import RunningProxyServer
from harness.race.engine import Phases, RaceEngine, RaceFailure
from harness.race.scenario import Race

BROKEN = "reference_impl.broken:read_then_write_step"


def _late_step_race() -> Race:
    from scenarios.races import LATE_STEP

    return LATE_STEP


async def _interleavings_per_second(
    adapter: Adapter, databases: DatabaseFactory, proxies: RunningProxyServer, rounds: int
) -> tuple[int, float, Phases]:
    async with RaceEngine(adapter, databases, proxies) as engine:
        started, count = time.perf_counter(), 0
        for _ in range(rounds):
            count += (await engine.explore(_late_step_race())).run
        return count, time.perf_counter() - started, engine.phases


async def _naive_reproductions(adapter: Adapter, databases: DatabaseFactory, runs: int) -> int:
    """The test people write first: both operations at once in two tasks, then look."""
    race = _late_step_race()
    step, finalize = race.actors["step"][0], race.actors["finalize"][0]
    reproduced = 0
    for _ in range(runs):
        dsn = databases.create()
        try:
            stores = [
                await adapter.connect(with_params(dsn, application_name=f"naive-{n}"))
                for n in range(2)
            ]
            try:
                context = await race.setup(stores[0], None)  # type: ignore[arg-type]
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(step.perform, stores[0], context)
                    tasks.start_soon(finalize.perform, stores[1], context)
                row = await stores[0].get_message(
                    message_id=context["message_id"], workspace_id=step.arguments["workspace_id"]
                )
                reproduced += row is not None and row.content != "final answer"
            finally:
                for store in stores:
                    await store.aclose()
        finally:
            databases.drop(dsn)
    return reproduced


async def _engine_catches(
    adapter: Adapter, databases: DatabaseFactory, proxies: RunningProxyServer, explorations: int
) -> int:
    caught = 0
    async with RaceEngine(adapter, databases, proxies) as engine:
        for _ in range(explorations):
            try:
                await engine.explore(_late_step_race())
            except RaceFailure:
                caught += 1
    return caught


async def _measure(dsn: str, naive_runs: int, explorations: int) -> None:
    reference, broken = load_adapter("reference"), load_adapter(BROKEN)
    good, bad = DatabaseFactory(dsn), DatabaseFactory(dsn)
    good.prepare_template(reference.install)
    bad.prepare_template(broken.install)
    try:
        with RunningProxyServer.start() as proxies:
            count, seconds, phases = await _interleavings_per_second(reference, good, proxies, 10)
            naive = await _naive_reproductions(broken, bad, naive_runs)
            caught = await _engine_catches(broken, bad, proxies, explorations)
    finally:
        good.close()
        bad.close()
    print("race engine, statement level, late step vs finalize (MSG-4)")
    print(
        f"  {count} interleavings on fresh databases in {seconds:.1f} s: "
        f"{count / seconds:.1f} interleavings/s"
    )
    print(
        "  per interleaving: "
        + ", ".join(
            f"{phase} {1000 * total / count:.1f} ms" for phase, total in phases.seconds.items()
        )
    )
    print(f"the late-update bug of {BROKEN}")
    print(
        f"  naive concurrent test (two tasks, no gating): reproduced in {naive} of "
        f"{naive_runs} runs ({100 * naive / naive_runs:.1f}%)"
    )
    print(
        f"  race engine (every schedule): caught in {caught} of {explorations} "
        f"explorations ({100 * caught / explorations:.0f}%)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnproof bench race", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dsn", help="PostgreSQL to measure against (default: embedded)")
    parser.add_argument("--naive-runs", type=int, default=200, help="runs of the naive test")
    parser.add_argument("--explorations", type=int, default=20, help="engine explorations")
    args = parser.parse_args(argv)
    server = start_postgres("auto", args.dsn, log=print)
    try:
        anyio.run(_measure, server.admin_dsn, args.naive_runs, args.explorations)
    finally:
        server.stop()
    return 0
