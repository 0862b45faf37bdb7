"""Overhead of the proxy's no-toxic path (not a test): added round-trip time of a
PostgreSQL `SELECT 1`, and raw throughput through an echo upstream.

    turnproof bench proxy [--dsn DSN] [--queries N] [--megabytes M]

Without --dsn it measures against the harness's own PostgreSQL (embedded by default).

Both paths are measured in the same run, interleaved, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness.postgres.resolver import start_postgres
from harness.proxy.server import RunningProxyServer

BLOCK = 1 << 20


def _round_trips(conn: psycopg.Connection, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        times.append(time.perf_counter() - start)
    return times


def measure_latency(srv: RunningProxyServer, dsn: str, queries: int) -> tuple[float, float]:
    """Median SELECT 1 round trip (seconds): direct, through the proxy."""
    params = conninfo_to_dict(dsn)
    upstream = f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"
    proxy = srv.create_proxy("benchmark-pg", upstream)
    proxied_dsn = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
    direct, proxied = [], []
    with (
        psycopg.connect(dsn, autocommit=True) as dconn,
        psycopg.connect(proxied_dsn, autocommit=True) as pconn,
    ):
        _round_trips(dconn, 200)  # warm up both paths
        _round_trips(pconn, 200)
        for _ in range(10):
            direct += _round_trips(dconn, queries // 10)
            proxied += _round_trips(pconn, queries // 10)
    srv.registry.delete_proxy("benchmark-pg")
    return statistics.median(direct), statistics.median(proxied)


@contextmanager
def _echo_server() -> Iterator[int]:
    """A blocking echo upstream in a thread (syscalls release the GIL)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        buf = bytearray(BLOCK)
        with conn:
            while n := conn.recv_into(buf):
                conn.sendall(memoryview(buf)[:n])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


def measure_throughput(srv: RunningProxyServer, megabytes: int) -> float:
    """MB/s of payload sent through the proxy to an echo server and back."""
    total = megabytes * BLOCK
    with _echo_server() as port:
        proxy = srv.create_proxy("benchmark-echo", f"127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            payload = b"x" * BLOCK

            def send() -> None:
                for _ in range(megabytes):
                    client.sendall(payload)

            start = time.perf_counter()
            sender = threading.Thread(target=send)
            sender.start()
            buf, received = bytearray(BLOCK), 0
            while received < total:
                n = client.recv_into(buf)
                if not n:
                    raise RuntimeError("echo connection closed early")
                received += n
            elapsed = time.perf_counter() - start
            sender.join()
        srv.registry.delete_proxy("benchmark-echo")
    return total / elapsed / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnproof bench proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dsn", help="PostgreSQL to measure against (default: embedded)")
    parser.add_argument("--queries", type=int, default=5000, help="SELECT 1 per path")
    parser.add_argument("--megabytes", type=int, default=256, help="echo payload (MiB)")
    args = parser.parse_args(argv)
    server = start_postgres("auto", args.dsn, log=print)
    try:
        with RunningProxyServer.start() as srv:
            direct, proxied = measure_latency(srv, server.admin_dsn, args.queries)
            rate = measure_throughput(srv, args.megabytes)
    finally:
        server.stop()
    added = (proxied - direct) * 1000
    print(f"SELECT 1 median round trip, {args.queries} queries per path ({server.description})")
    print(f"  direct:        {direct * 1000:.3f} ms")
    print(f"  through proxy: {proxied * 1000:.3f} ms")
    print(f"  added:         {added:.3f} ms (target <= 0.2 ms)   ratio {proxied / direct:.2f}x")
    print(f"throughput, no toxics, {args.megabytes} MiB via echo upstream")
    print(f"  {rate:.0f} MB/s (target >= 100 MB/s)")
    return 0


if __name__ == "__main__":
    main()
