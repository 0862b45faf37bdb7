"""Running a ProxyServer with its HTTP API: in a background thread (for tests and
synchronous harness code) or in the foreground (the `turnproof proxy serve` command).

A dedicated thread and loop are needed because the API is also driven by synchronous
clients (toxiproxy-python uses `requests`): a blocking HTTP call to a server running on
the caller's own loop would deadlock.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from harness.proxy.addresses import DEFAULT_LISTEN, check_bind_allowed, format_host_port
from harness.proxy.http_api import ApiServer
from harness.proxy.proxy import Proxy
from harness.proxy.registry import ProxyServer

T = TypeVar("T")

STARTUP_TIMEOUT = 10.0


class RunningProxyServer:
    """A ProxyServer plus its HTTP API on their own loop in a daemon thread.

    Use `with RunningProxyServer.start() as srv:`; `srv.registry` (and the Proxy and
    StatementGate objects it hands out) may be used from any thread or loop.
    """

    def __init__(self, host: str, port: int, allow_remote: bool) -> None:
        self._requested = (host, port)
        self._allow_remote = allow_remote
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._registry: ProxyServer | None = None
        self.host, self.port = host, port
        self._thread = threading.Thread(target=self._run, name="turnproof-proxy", daemon=True)

    @classmethod
    def start(
        cls, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False
    ) -> RunningProxyServer:
        """Start the thread and wait until the API listens (raises what startup raised)."""
        check_bind_allowed(host, allow_remote)
        server = cls(host, port, allow_remote)
        server._thread.start()
        if not server._ready.wait(STARTUP_TIMEOUT):
            raise RuntimeError("proxy server did not start in time")
        if server._error is not None:
            server._thread.join()
            raise server._error
        return server

    @property
    def api_url(self) -> str:
        return f"http://{format_host_port(self.host, self.port)}"

    @property
    def registry(self) -> ProxyServer:
        assert self._registry is not None
        return self._registry

    def call(self, fn: Callable[[ProxyServer], T]) -> T:
        """Run `fn(registry)` on the server's loop and return its result."""
        return self.registry.owner.call(fn, self.registry)

    def create_proxy(
        self, name: str, upstream: str, listen: str = DEFAULT_LISTEN, enabled: bool = True
    ) -> Proxy:
        return self.registry.create_proxy(name, upstream, listen, enabled)

    def stop(self) -> None:
        """Close every proxy, connection and the API, then join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> RunningProxyServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._registry = ProxyServer(allow_remote=self._allow_remote)
            api = ApiServer(self._registry)
            self.host, self.port = await api.start(*self._requested)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await api.close()
            self._registry.close()
            await asyncio.sleep(0)  # let the aborted transports run connection_lost


def serve_forever(host: str = "127.0.0.1", port: int = 8474, allow_remote: bool = False) -> None:
    """Serve the API in the foreground until SIGINT/SIGTERM, then close everything."""
    check_bind_allowed(host, allow_remote)
    asyncio.run(_serve(host, port, allow_remote))


async def _serve(host: str, port: int, allow_remote: bool) -> None:
    registry = ProxyServer(allow_remote=allow_remote)
    api = ApiServer(registry)
    bound_host, bound_port = await api.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"turnproof proxy server: http://{format_host_port(bound_host, bound_port)}", flush=True)
    try:
        await stop.wait()
    finally:
        await api.close()
        registry.close()
        await asyncio.sleep(0)  # let the aborted transports run connection_lost
