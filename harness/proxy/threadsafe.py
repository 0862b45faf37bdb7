"""Calling loop-owned objects from any thread or event loop.

The proxy core lives on one event loop, but the harness drives it from pytest's loop, from
synchronous code and from the HTTP API. Every public method of the core goes through
`LoopOwner` so that callers never touch loop state from the wrong thread, and a caller on
the owning loop never blocks on itself (which would deadlock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

CROSS_THREAD_CALL_TIMEOUT = 60.0


class LoopOwner:
    """The event loop (and its thread) that owns a group of core objects."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread_id = threading.get_ident()

    def on_owner_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a synchronous `fn` on the owner loop and return its result (blocking)."""
        if self.on_owner_thread():
            return fn(*args, **kwargs)
        if self.loop.is_closed() or not self.loop.is_running():
            raise RuntimeError("the proxy server's event loop is not running")
        future: concurrent.futures.Future[R] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(CROSS_THREAD_CALL_TIMEOUT)

    async def run(self, coro_fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Await `coro_fn(*args)` on the owner loop from whichever loop the caller is on."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await coro_fn(*args)
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro_fn, *args), self.loop)
        return await asyncio.wrap_future(future)


async def _as_coroutine(coro_fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    return await coro_fn(*args)


def owner_thread(method: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run this synchronous method on the owning loop's thread."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        owner: LoopOwner = args[0]._owner  # type: ignore[attr-defined]
        return owner.call(method, *args, **kwargs)

    return wrapper
