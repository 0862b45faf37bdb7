"""Fixtures for the proxy tests: a proxy server (ours in-process, or a real Toxiproxy at
TOXIPROXY_URL), a threaded echo upstream with per-connection records, socket helpers,
and the local PostgreSQL server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import requests

from harness.postgres.resolver import PostgresServer
from harness.proxy.client import configured_url
from harness.proxy.server import RunningProxyServer

WAIT = 5.0  # upper bound of every wait for something that must happen


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class ServerUnderTest:
    url: str
    running: RunningProxyServer | None  # None when testing a real Toxiproxy


@pytest.fixture(scope="session")
def server() -> Iterator[ServerUnderTest]:
    url = configured_url()
    if url:
        yield ServerUnderTest(url.rstrip("/"), None)
        return
    with RunningProxyServer.start() as running:
        yield ServerUnderTest(running.api_url, running)


@pytest.fixture
def ours(server: ServerUnderTest) -> RunningProxyServer:
    """Our in-process server; extension tests skip against a real Toxiproxy."""
    if server.running is None:
        pytest.skip("statement gate and core API are extensions of the harness's own server")
    return server.running


class Api:
    """requests against the server under test; removes the proxies it created."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.created: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=WAIT * 2, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def name(self) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        self.created.append(name)
        return name

    def create_proxy(
        self, upstream: str, listen: str = "127.0.0.1:0", **extra: Any
    ) -> dict[str, Any]:
        body = {"name": self.name(), "upstream": upstream, "listen": listen, **extra}
        response = self.post("/proxies", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def add_toxic(self, proxy: dict[str, Any], **toxic: Any) -> dict[str, Any]:
        response = self.post(f"/proxies/{proxy['name']}/toxics", json=toxic)
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        for name in self.created:
            self.delete(f"/proxies/{name}")
        self.session.close()


@pytest.fixture
def api(server: ServerUnderTest) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.close()


@dataclass
class EchoConnection:
    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    got_data: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


class EchoServer:
    """Echoes every byte back; records what each connection received and its end."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[EchoConnection] = []
        self.accepted = threading.Semaphore(0)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = EchoConnection(sock)
            self.connections.append(conn)
            self.accepted.release()
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, conn: EchoConnection) -> None:
        try:
            while data := conn.sock.recv(1 << 16):
                conn.received += data
                conn.got_data.set()
                conn.sock.sendall(data)
        except OSError:
            pass
        finally:
            conn.ended.set()
            conn.sock.close()

    def next_connection(self) -> EchoConnection:
        assert self.accepted.acquire(timeout=WAIT), "the proxy never dialled the upstream"
        return self.connections[-1]

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(WAIT)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


class Net:
    """Blocking-socket helpers with bounded waits."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sockets.append(sock)
        return sock

    @staticmethod
    def recv_exactly(sock: socket.socket, size: int, timeout: float = WAIT) -> bytes:
        sock.settimeout(timeout)
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def round_trip(self, sock: socket.socket, payload: bytes = b"ping") -> float:
        start = time.perf_counter()
        sock.sendall(payload)
        assert self.recv_exactly(sock, len(payload)) == payload
        return time.perf_counter() - start

    @staticmethod
    def ending(sock: socket.socket, timeout: float = WAIT) -> str:
        """How the peer ended the connection: 'eof', 'reset', or 'open' if still open
        after `timeout` (the bound of the wait). Data received meanwhile is 'data'."""
        sock.settimeout(timeout)
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"
        return "data" if data else "eof"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def net() -> Iterator[Net]:
    helper = Net()
    yield helper
    helper.close()


@pytest.fixture(scope="session")
def pg_dsn(postgres_server: PostgresServer) -> str:
    """The session's PostgreSQL server (embedded unless TURNPROOF_PG_DSN names one)."""
    return postgres_server.admin_dsn


@pytest.fixture
def pg_upstream(pg_dsn: str) -> str:
    """host:port of that server, as a proxy's upstream."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"


@pytest.fixture
def dsn_through(pg_dsn: str) -> Callable[..., str]:
    """The test DSN pointed at a proxy listener."""

    def through(port: int, **params: Any) -> str:
        return psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=port, **params)

    return through
