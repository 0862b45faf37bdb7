"""The harness's network proxy: a Toxiproxy-compatible server with a PostgreSQL
statement gate for forcing races (see docs/proxy.md)."""

from harness.proxy.client import toxiproxy_client
from harness.proxy.errors import (
    BadRequest,
    Conflict,
    ListenError,
    NotFound,
    ProxyError,
    WaitTimeout,
)
from harness.proxy.proxy import Proxy
from harness.proxy.registry import PopulateError, ProxyConfig, ProxyServer
from harness.proxy.server import RunningProxyServer, serve_forever
from harness.proxy.statement_gate import StatementEvent, StatementGate
from harness.proxy.toxics import ToxicSpec

__all__ = [
    "BadRequest",
    "Conflict",
    "ListenError",
    "NotFound",
    "PopulateError",
    "Proxy",
    "ProxyConfig",
    "ProxyError",
    "ProxyServer",
    "RunningProxyServer",
    "StatementEvent",
    "StatementGate",
    "ToxicSpec",
    "WaitTimeout",
    "serve_forever",
    "toxiproxy_client",
]
