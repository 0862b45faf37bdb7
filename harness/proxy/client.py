"""Using toxiproxy-python safely against a chosen server.

toxiproxy-python keeps the server address in class attributes (`APIConsumer.host` and
`.port`), shared by the whole process. `toxiproxy_client()` sets them under a lock for
the duration of a block and restores them after, so that two servers (ours and a real
Toxiproxy, or two test sessions in threads) are never confused.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from toxiproxy.api import APIConsumer
from toxiproxy.server import Toxiproxy

DEFAULT_URL = "http://127.0.0.1:8474"
URL_VARIABLE = "TOXIPROXY_URL"

_lock = threading.RLock()


def api_address(url: str) -> tuple[str, int]:
    """(host, port) of an API URL such as `http://127.0.0.1:8474`."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if not parts.hostname:
        raise ValueError(f"not a Toxiproxy API URL: {url!r}")
    return parts.hostname, parts.port or 8474


def configured_url() -> str | None:
    """The real Toxiproxy server the user pointed us at, if any (TOXIPROXY_URL)."""
    return os.environ.get(URL_VARIABLE) or None


@contextmanager
def toxiproxy_client(url: str = DEFAULT_URL) -> Iterator[Toxiproxy]:
    """A toxiproxy-python `Toxiproxy` bound to `url` for the duration of the block.

    Objects it returns (proxies, toxics) use the same class-level address, so use them
    only inside the block. Other threads wait while a block is open.
    """
    host, port = api_address(url)
    with _lock:
        saved = APIConsumer.host, APIConsumer.port
        APIConsumer.host, APIConsumer.port = host, port
        try:
            yield Toxiproxy()
        finally:
            APIConsumer.host, APIConsumer.port = saved
