"""Database writes a streaming writer makes for a stream of deltas (not a test): with its
debounce window, and with debounce 0 (every delta written at once), in the same run.

    turnproof bench writer [--adapter SPEC | --adapter-cmd CMD] [--deltas N]
                           [--spacing-ms MS] [--window-ms MS] [--dsn DSN]

The writer replica talks to PostgreSQL through the harness's own proxy, and its writes
are the statements the proxy's gate saw run on that connection: counted on the wire, not
taken from the writer (a statement that only prepares another runs nothing: not counted).
The deltas are paced on real time (a model's stream), and the writer's window runs on
real time too. Without --dsn it measures against the harness's own PostgreSQL (embedded
by default).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import timedelta

import anyio
from psycopg.conninfo import conninfo_to_dict

from harness.adapter_loading import load_adapter
from harness.contract import Adapter
from harness.driver.client import DriverAdapter
from harness.postgres.databases import DatabaseFactory, with_params
from harness.postgres.resolver import start_postgres
from harness.proxy.server import RunningProxyServer
from harness.proxy.statement_gate import StatementGate

WORKSPACE = "bench"


@dataclass(frozen=True)
class Arm:
    """One measured stream: the window, the writes the wire saw, and how long it took."""

    debounce: timedelta
    deltas: int
    writes: int
    seconds: float
    behind: float  # the largest lag of a delta behind its schedule, in seconds

    @property
    def writes_per_1000(self) -> float:
        return self.writes * 1000 / self.deltas


async def stream(
    adapter: Adapter,
    dsn: str,
    proxied_dsn: str,
    gate: StatementGate,
    debounce: timedelta,
    deltas: int,
    spacing: float,
) -> Arm:
    """`deltas` text deltas, `spacing` seconds apart, to one message, then a flush."""
    setup = await adapter.connect(dsn)
    try:
        chat = await setup.create_chat(workspace_id=WORKSPACE)
        message = await setup.persist_assistant_shell(
            chat_id=chat, workspace_id=WORKSPACE, turn_id=f"bench-{debounce.total_seconds()}"
        )
    finally:
        await setup.aclose()
    assert message is not None
    store = await adapter.connect(proxied_dsn)
    try:
        writer = await store.writer(debounce)
        before = len(gate.events)
        start, behind, text = anyio.current_time(), 0.0, ""
        for i in range(deltas):
            due = start + i * spacing
            await anyio.sleep_until(due)
            behind = max(behind, anyio.current_time() - due)
            text += f"token{i} "
            await writer.update(message, WORKSPACE, text, [{"type": "text", "text": text}])
        await writer.flush(message)
        elapsed = anyio.current_time() - start
        writes = sum(bool(event.command_tags) for event in gate.events[before:])
        await writer.aclose()
    finally:
        await store.aclose()
    return Arm(debounce, deltas, writes, elapsed, behind)


async def measure(
    adapter: Adapter, dsn: str, proxies: RunningProxyServer, args: argparse.Namespace
) -> list[Arm]:
    params = conninfo_to_dict(dsn)
    upstream = f"{params.get('host') or '127.0.0.1'}:{params.get('port') or 5432}"
    arms = []
    for debounce in (timedelta(milliseconds=args.window_ms), timedelta(0)):
        name = f"bench-writer-{int(debounce.total_seconds() * 1000)}ms-{time.monotonic_ns()}"
        proxy = proxies.create_proxy(name, upstream)
        gate = proxy.gate()
        proxied = with_params(
            dsn, host="127.0.0.1", port=str(proxy.port), application_name="turnproof-bench-writer"
        )
        try:
            arms.append(
                await stream(
                    adapter, dsn, proxied, gate, debounce, args.deltas, args.spacing_ms / 1000
                )
            )
        finally:
            proxies.registry.delete_proxy(name)
    return arms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnproof bench writer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--adapter", default="reference", help="an adapter declaring coalescing")
    parser.add_argument("--adapter-cmd", help="a driver declaring coalescing, instead")
    parser.add_argument("--deltas", type=int, default=1000, help="deltas per stream")
    parser.add_argument("--spacing-ms", type=float, default=2.0, help="time between deltas")
    parser.add_argument("--window-ms", type=float, default=33.0, help="the debounce window")
    parser.add_argument("--dsn", help="PostgreSQL to measure against (default: embedded)")
    args = parser.parse_args(argv)
    if args.adapter_cmd:
        adapter: Adapter = DriverAdapter.from_command_line(args.adapter_cmd)
    else:
        adapter = load_adapter(args.adapter)
    if "coalescing" not in adapter.capabilities:
        parser.error(f"adapter {adapter.name!r} does not declare coalescing: it has no writer")
    server = start_postgres("auto", args.dsn, log=print)
    factory = DatabaseFactory(server.admin_dsn)
    proxies = RunningProxyServer.start()
    try:
        factory.prepare_template(adapter.install)
        arms = anyio.run(measure, adapter, factory.create(), proxies, args)
    finally:
        proxies.stop()
        factory.close()
        server.stop()
        if isinstance(adapter, DriverAdapter):
            adapter.close()
    print(
        f"streaming writer of {adapter.name!r}: {args.deltas} deltas {args.spacing_ms:g} ms "
        f"apart to one message, then a flush ({server.description})"
    )
    print(f"  {'debounce':>10}{'writes':>9}{'per 1,000 deltas':>19}{'seconds':>10}{'max lag':>10}")
    for arm in arms:
        print(
            f"  {arm.debounce.total_seconds() * 1000:>7g} ms{arm.writes:>9}"
            f"{arm.writes_per_1000:>19.1f}{arm.seconds:>10.2f}{arm.behind * 1000:>7.1f} ms"
        )
    debounced, immediate = arms
    ratio = immediate.writes / max(debounced.writes, 1)
    print(f"  the {args.window_ms:g} ms window writes {ratio:.1f}x less often than debounce 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
