"""Network faults for scenarios: app replicas behind their own proxy, and the faults to apply.

A pytest plugin, registered by `harness.pytest_plugin`. Each replica a scenario opens with
`faulty_store` reaches PostgreSQL through a proxy of its own, so a fault on one replica's
link (a toxic, the proxy taken down, a cut) leaves every other replica healthy:

    writer = await faulty_store(name="writer")            # writer.store is a TurnStore
    held = writer.add_toxic("latency", stream="upstream", latency=600_000)
    ...                                                    # the writer's bytes wait
    writer.remove_toxic(held)                              # ... and are flushed onward

The proxies are the harness's own in-process server (Toxiproxy-compatible, plus the
statement gate), or a real Toxiproxy given by `--toxiproxy-url URL` / `TOXIPROXY_URL`,
driven through toxiproxy-python. A real Toxiproxy has no statement gate: scenarios
that need one carry `@pytest.mark.needs_gate` and are skipped there, with the reason.
The mark is a promise, not a switch: `replica.gate` raises a HarnessError under a
real Toxiproxy, so a scenario that uses the gate without the mark errors instead of
passing untested.

Option: `--toxiproxy-url URL`. Marker: `needs_gate`. Fixture: `faulty_store`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import anyio
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from toxiproxy.proxy import Proxy as ToxiproxyProxy
from toxiproxy.server import Toxiproxy

from harness.adapter_loading import assert_store
from harness.contract import Adapter, Clock, TurnStore
from harness.errors import HarnessError, UsageError
from harness.postgres.databases import with_params
from harness.proxy.addresses import split_host_port
from harness.proxy.client import URL_VARIABLE, configured_url, toxiproxy_client
from harness.proxy.server import RunningProxyServer
from harness.proxy.statement_gate import StatementGate
from harness.pytest_plugin.run import USAGE_ERROR, turnproof_run

NEEDS_GATE = "needs_gate"
CLOSE_TIMEOUT = 5.0
"""Bound on closing a replica's store at teardown: a cut connection may refuse a clean close."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("turnproof", "turnproof conformance harness")
    group.addoption(
        "--toxiproxy-url",
        dest="toxiproxy_url",
        default=None,
        metavar="URL",
        help="drive the network-fault scenarios through this real Toxiproxy server "
        "(e.g. http://127.0.0.1:8474) instead of the harness's own proxy; scenarios "
        f"marked {NEEDS_GATE} are skipped there [{URL_VARIABLE}]",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{NEEDS_GATE}: the scenario needs the harness proxy's statement gate; "
        "skipped under --toxiproxy-url (a real Toxiproxy has none)",
    )


def toxiproxy_url(config: pytest.Config) -> str | None:
    """The real Toxiproxy chosen by --toxiproxy-url or TOXIPROXY_URL; None for our own server."""
    url = config.getoption("toxiproxy_url", None) or configured_url()
    return url.rstrip("/") if url else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    url = toxiproxy_url(config)
    if url is None:
        return
    skip = pytest.mark.skip(
        reason=f"needs the statement gate of the harness's own proxy; the real Toxiproxy "
        f"at {url} (--toxiproxy-url) has none"
    )
    for item in items:
        if item.get_closest_marker(NEEDS_GATE) is not None:
            item.add_marker(skip)


# Proxy back ends ----------------------------------------------------------------------


class _ProxyControl(Protocol):
    """What a replica needs of its proxy, whichever server runs it."""

    name: str
    host: str
    port: int
    gate: StatementGate | None

    def add_toxic(
        self, type: str, *, name: str, stream: str, toxicity: float, attributes: dict[str, int]
    ) -> None: ...
    def remove_toxic(self, name: str) -> None: ...
    def set_enabled(self, enabled: bool) -> None: ...
    def delete(self) -> None: ...


class _OwnProxy:
    """A proxy of the harness's in-process server, with its statement gate installed
    before any connection, so it sees every statement of the replica."""

    def __init__(self, server: RunningProxyServer, name: str, upstream: str) -> None:
        self._server = server
        self._proxy = server.create_proxy(name, upstream)
        self.gate: StatementGate | None = self._proxy.gate()
        self.name = name
        self.host, self.port = split_host_port(self._proxy.listen)

    def add_toxic(
        self, type: str, *, name: str, stream: str, toxicity: float, attributes: dict[str, int]
    ) -> None:
        self._proxy.add_toxic(
            type, name=name, stream=stream, toxicity=toxicity, attributes=attributes
        )

    def remove_toxic(self, name: str) -> None:
        self._proxy.remove_toxic(name)

    def set_enabled(self, enabled: bool) -> None:
        self._proxy.update(enabled=enabled)

    def delete(self) -> None:
        name = self.name
        self._server.call(lambda registry: registry.delete_proxy(name))


class _ToxiproxyProxy:
    """A proxy of a real Toxiproxy server, through toxiproxy-python (no statement gate).

    toxiproxy-python's objects are bound to the server only inside a `toxiproxy_client`
    block, so every call looks the proxy up afresh inside one.
    """

    gate: StatementGate | None = None

    def __init__(self, url: str, name: str, upstream: str) -> None:
        self._url = url
        self.name = name
        with toxiproxy_client(url) as toxiproxy:
            created = toxiproxy.create(upstream=upstream, name=name, listen="127.0.0.1:0")
        self.host, self.port = split_host_port(created.listen)

    def add_toxic(
        self, type: str, *, name: str, stream: str, toxicity: float, attributes: dict[str, int]
    ) -> None:
        with toxiproxy_client(self._url) as toxiproxy:
            self._find(toxiproxy).add_toxic(
                type=type, name=name, stream=stream, toxicity=toxicity, attributes=attributes
            )

    def remove_toxic(self, name: str) -> None:
        with toxiproxy_client(self._url) as toxiproxy:
            self._find(toxiproxy).destroy_toxic(name)

    def set_enabled(self, enabled: bool) -> None:
        with toxiproxy_client(self._url) as toxiproxy:
            proxy = self._find(toxiproxy)
            if enabled:
                proxy.enable()
            else:
                proxy.disable()

    def delete(self) -> None:
        with toxiproxy_client(self._url) as toxiproxy:
            self._find(toxiproxy).destroy()

    def _find(self, toxiproxy: Toxiproxy) -> ToxiproxyProxy:
        proxy = toxiproxy.get_proxy(self.name)
        if proxy is None:
            raise HarnessError(f"the Toxiproxy at {self._url} lost proxy {self.name!r}")
        return proxy


ProxyFactory = Callable[[str, str], _ProxyControl]


def _reachable_toxiproxy(url: str) -> None:
    """Fail the run at once, as a usage error, when the given Toxiproxy does not answer."""
    try:
        with toxiproxy_client(url) as toxiproxy:
            version = toxiproxy.version()
    except Exception as exc:
        raise UsageError(f"--toxiproxy-url {url}: {type(exc).__name__}: {exc}") from None
    if version is None:
        raise UsageError(f"--toxiproxy-url {url}: no Toxiproxy server answers there")


@pytest.fixture(scope="session")
def _fault_proxies(pytestconfig: pytest.Config) -> ProxyFactory:
    """Makes one proxy per replica on the session's chosen server."""
    url = toxiproxy_url(pytestconfig)
    if url is None:
        server = turnproof_run(pytestconfig).proxies()
        return lambda name, upstream: _OwnProxy(server, name, upstream)
    try:
        _reachable_toxiproxy(url)
    except UsageError as exc:
        pytest.exit(f"turnproof: {exc}", USAGE_ERROR)
    return lambda name, upstream: _ToxiproxyProxy(url, name, upstream)


# Replicas -----------------------------------------------------------------------------


class _Observer:
    """A direct control connection (no proxy) that reads pg_stat_activity, opened lazily."""

    def __init__(self, dsn: str) -> None:
        self._dsn = with_params(dsn, application_name="turnproof-observer")
        self._connection: psycopg.AsyncConnection | None = None

    async def last_statement_started(self, application_name: str) -> datetime | None:
        if self._connection is None:
            self._connection = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        cursor = await self._connection.execute(
            "SELECT max(query_start) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (application_name,),
        )
        row = await cursor.fetchone()
        return row[0] if row else None

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()


@dataclass
class FaultyReplica:
    """One app replica whose every byte to and from PostgreSQL passes its own proxy.

    Faults change only this replica's link; the control calls are synchronous and
    take effect on live connections before they return.
    """

    name: str
    dsn: str
    store: TurnStore
    _proxy: _ProxyControl
    _connect: Callable[[], Awaitable[TurnStore]]
    _observer: _Observer

    @property
    def application_name(self) -> str:
        return f"turnproof-{self.name}"

    def add_toxic(
        self,
        type: str,
        *,
        stream: str,
        name: str | None = None,
        toxicity: float = 1.0,
        **attributes: int,
    ) -> str:
        """Add a Toxiproxy toxic (`latency`, `timeout`, `reset_peer`, `limit_data`,
        `bandwidth`, `slicer`, `slow_close`) to one direction: `upstream` is the
        replica's requests, `downstream` the answers. Returns the toxic's name."""
        toxic = name or f"{type}_{stream}"
        self._proxy.add_toxic(
            type, name=toxic, stream=stream, toxicity=toxicity, attributes=attributes
        )
        return toxic

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic; whatever it was holding is delivered onward, nothing is lost."""
        self._proxy.remove_toxic(name)

    def down(self) -> None:
        """Take the proxy down (`enabled: false`): every live connection is closed and new
        ones are refused; the toxics stay."""
        self._proxy.set_enabled(False)

    def up(self) -> None:
        """Listen again, on the same port: a new connection (`reconnect`) gets through."""
        self._proxy.set_enabled(True)

    @property
    def has_gate(self) -> bool:
        """Whether the statement gate is there (our own proxy server, not a real Toxiproxy)."""
        return self._proxy.gate is not None

    @property
    def gate(self) -> StatementGate:
        """The proxy's statement gate: it has seen every statement of this replica."""
        if self._proxy.gate is None:
            raise HarnessError(
                f"replica {self.name!r}: a real Toxiproxy has no statement gate; mark the "
                f"scenario @pytest.mark.{NEEDS_GATE} so that it is skipped there"
            )
        return self._proxy.gate

    def cut(self) -> None:
        """Reset both sides of every live connection now (gate only): held bytes are lost."""
        self.gate.cut()

    async def reconnect(self) -> TurnStore:
        """A new store through the same proxy (after `up()`, or a cut); it becomes `store`.
        The old one is left as it is (likely broken) and closed at teardown."""
        self.store = await self._connect()
        return self.store

    async def last_statement_started(self) -> datetime | None:
        """When (database clock) this replica's newest statement began to execute, as
        pg_stat_activity reports it; None when the replica has no backend."""
        return await self._observer.last_statement_started(self.application_name)


@dataclass
class _Replicas:
    adapter: Adapter
    dsn: str
    upstream: str
    make_proxy: ProxyFactory
    observer: _Observer
    wrap: Callable[[TurnStore], TurnStore]
    """The run's guard for the scenario's stores (TurnproofRun.wrap_store)."""
    replicas: list[FaultyReplica] = field(default_factory=list)
    proxies: list[_ProxyControl] = field(default_factory=list)
    stores: list[TurnStore] = field(default_factory=list)

    async def open(self, *, name: str, clock: Clock | None = None) -> FaultyReplica:
        if any(r.name == name for r in self.replicas):
            raise HarnessError(f"replica name {name!r} is already used in this scenario")
        proxy = self.make_proxy(f"turnproof-{name}-{uuid.uuid4().hex[:8]}", self.upstream)
        self.proxies.append(proxy)
        dsn = with_params(
            self.dsn,
            host=proxy.host,
            port=str(proxy.port),
            application_name=f"turnproof-{name}",
        )

        async def connect() -> TurnStore:
            store = assert_store(await self.adapter.connect(dsn, clock=clock), self.adapter.name)
            self.stores.append(store)
            return self.wrap(store)

        replica = FaultyReplica(name, dsn, await connect(), proxy, connect, self.observer)
        self.replicas.append(replica)
        return replica

    async def close(self) -> None:
        """Close every store (bounded: a cut one may hang), then delete every proxy."""
        try:
            for store in reversed(self.stores):
                with (
                    anyio.move_on_after(CLOSE_TIMEOUT, shield=True),
                    contextlib.suppress(Exception),
                ):
                    await store.aclose()
            await self.observer.aclose()
        finally:
            for proxy in reversed(self.proxies):
                proxy.delete()


def _upstream(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/") or "," in host:
        raise HarnessError(
            f"network faults need PostgreSQL over one TCP address, not host={host!r}"
        )
    return f"{host}:{params.get('port') or 5432}"


@pytest.fixture
async def faulty_store(
    request: pytest.FixtureRequest, adapter: Adapter, turn_dsn: str, _fault_proxies: ProxyFactory
) -> AsyncIterator[Callable[..., Awaitable[FaultyReplica]]]:
    """Replicas behind proxies of their own: `replica = await faulty_store(name="writer")`.

    `replica.store` is the adapter's TurnStore on the test's database, with
    application_name `turnproof-<name>`; everything made here is removed at teardown.
    """
    run = turnproof_run(request.config)
    replicas = _Replicas(
        adapter,
        turn_dsn,
        _upstream(turn_dsn),
        _fault_proxies,
        _Observer(turn_dsn),
        lambda store: run.wrap_store(store, request.node),
    )
    try:
        yield replicas.open
    finally:
        await replicas.close()
