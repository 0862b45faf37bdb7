"""Parsing, policy and formatting of `host:port` listen addresses.

Kept apart because the loopback-only policy must be applied identically to the proxy
listeners and to the HTTP API itself.
"""

from __future__ import annotations

import ipaddress
import socket

from harness.proxy.errors import BadRequest

DEFAULT_LISTEN = "127.0.0.1:0"


def split_host_port(address: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:port`); `localhost` becomes 127.0.0.1."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise BadRequest(f"invalid address {address!r}: expected host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    return host or "0.0.0.0", int(port_text)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind_allowed(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind unless the operator allowed it: a chaos proxy on a
    public interface would let anyone reach the database behind it."""
    if not allow_remote and not is_loopback(host):
        raise BadRequest(
            f"refusing to listen on non-loopback address {host!r}; "
            "start the proxy server with allow_remote to permit it"
        )


def format_host_port(host: str, port: int) -> str:
    """Inverse of split_host_port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
