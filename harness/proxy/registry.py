"""The set of named proxies one server owns, with Toxiproxy's populate and reset."""

from __future__ import annotations

from dataclasses import dataclass

from harness.proxy.addresses import DEFAULT_LISTEN
from harness.proxy.errors import BadRequest, Conflict, NotFound, ProxyError
from harness.proxy.proxy import Proxy, normalize_listen
from harness.proxy.threadsafe import LoopOwner, owner_thread


@dataclass(frozen=True)
class ProxyConfig:
    """What /populate (and create) take for one proxy."""

    name: str
    upstream: str
    listen: str = DEFAULT_LISTEN
    enabled: bool = True


class PopulateError(ProxyError):
    """A populate that failed part-way: the cause's status, and what was applied."""

    def __init__(self, cause: ProxyError, applied: list[Proxy]) -> None:
        super().__init__(cause.message)
        self.status = cause.status
        self.applied = applied


class ProxyServer:
    """Registry of proxies. Must be constructed on the event loop that will own it; every
    public method may then be called from any thread."""

    def __init__(self, *, allow_remote: bool = False) -> None:
        self._owner = LoopOwner()
        self.allow_remote = allow_remote
        self._proxies: dict[str, Proxy] = {}

    @property
    def owner(self) -> LoopOwner:
        return self._owner

    @owner_thread
    def create_proxy(
        self, name: str, upstream: str, listen: str = DEFAULT_LISTEN, enabled: bool = True
    ) -> Proxy:
        """Create and (unless disabled) bind a proxy; the upstream is not dialled yet."""
        _check_required(name, upstream)
        if name in self._proxies:
            raise Conflict("proxy already exists")
        proxy = Proxy(
            self._owner, name, listen or DEFAULT_LISTEN, upstream, allow_remote=self.allow_remote
        )
        if enabled:
            proxy.start()
        self._proxies[name] = proxy
        return proxy

    @owner_thread
    def proxy(self, name: str) -> Proxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise NotFound("proxy not found") from None

    @owner_thread
    def proxies(self) -> dict[str, Proxy]:
        return dict(self._proxies)

    @owner_thread
    def delete_proxy(self, name: str) -> None:
        """Stop it (its port closes, its connections end) and forget it."""
        proxy = self.proxy(name)
        del self._proxies[name]
        proxy.stop()
        proxy.remove_gate()

    @owner_thread
    def populate(self, configs: list[ProxyConfig]) -> list[Proxy]:
        """Create or replace proxies: one with the same listen and upstream is kept with
        its toxics, a changed one is replaced. Stops at the first error."""
        for config in configs:
            _check_required(config.name, config.upstream)
        applied: list[Proxy] = []
        for config in configs:
            try:
                existing = self._proxies.get(config.name)
                listen = normalize_listen(config.listen or DEFAULT_LISTEN, self.allow_remote)
                if existing and existing.listen == listen and existing.upstream == config.upstream:
                    applied.append(existing)
                    continue
                if existing:
                    self.delete_proxy(config.name)
                applied.append(
                    self.create_proxy(config.name, config.upstream, listen, config.enabled)
                )
            except ProxyError as exc:
                raise PopulateError(exc, applied) from exc
        return applied

    @owner_thread
    def reset(self) -> None:
        """Re-enable every proxy and remove every toxic (and statement gate)."""
        for proxy in self._proxies.values():
            proxy.start()
            proxy.remove_all_toxics()
            proxy.remove_gate()

    @owner_thread
    def close(self) -> None:
        """Stop every proxy: no listener or proxied connection is left open."""
        for name in list(self._proxies):
            self.delete_proxy(name)


def _check_required(name: str, upstream: str) -> None:
    if not name:
        raise BadRequest("missing required field: name")
    if "/" in name:
        raise BadRequest(
            f"bad proxy name {name!r}: it must not contain '/', or its URL (/proxies/NAME) "
            "could not address it"
        )
    if not upstream:
        raise BadRequest("missing required field: upstream")
