"""Time bounds for in-process adapters: install, connect, every store operation and
every streaming-writer operation.

A driver that leaves an operation unanswered is killed after 30 s (harness.driver). An
in-process Python adapter runs on the test's own event loop, so without a bound a hang in
its `install()`, `connect()` or any operation stalls the whole run silently. Each call gets
the same bound here and a hang becomes the implementation's failure, naming the call.

The bound is per call and generous on purpose: the race engine may hold an operation's
statements at its gate while other actors move, which lasts milliseconds to seconds, far
below the bound; the engine's own step timeout fires first when the harness is stuck.
Only cooperative hangs can be bounded: an implementation blocking the event loop in
synchronous code stalls the loop that would cancel it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from harness.adapter_loading import assert_store
from harness.contract import STORE_OPERATIONS, WRITER_OPERATIONS, Adapter, Clock, TurnStore
from harness.errors import OperationTimeout

DEFAULT_OPERATION_TIMEOUT = 30.0
_SHOWN_ARGUMENT = 40


async def bounded_call(
    what: str, seconds: float, function: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
) -> Any:
    """`await function(*args, **kwargs)`, or OperationTimeout naming `what` after `seconds`."""
    with anyio.move_on_after(seconds) as scope:
        result = await function(*args, **kwargs)
    if scope.cancelled_caught:
        raise OperationTimeout(
            f"{what} did not return within {seconds:g} s (the bound of every in-process call; "
            "--operation-timeout to change it)"
        )
    return result


class BoundedAdapter:
    """An in-process adapter whose install, connect and stores' operations are time-bounded.

    Anything else of the adapter (attributes a scenario or its author relies on) is the
    wrapped adapter's own.
    """

    def __init__(self, adapter: Adapter, seconds: float) -> None:
        self.wrapped = adapter
        self.seconds = seconds
        self.name = adapter.name
        self.capabilities = adapter.capabilities

    async def install(self, dsn: str) -> None:
        await bounded_call(
            f"adapter {self.name!r}: install()", self.seconds, self.wrapped.install, dsn
        )

    async def connect(self, dsn: str, *, clock: Clock | None = None) -> TurnStore:
        kwargs = {} if clock is None else {"clock": clock}
        store = await bounded_call(
            f"adapter {self.name!r}: connect()", self.seconds, self.wrapped.connect, dsn, **kwargs
        )
        assert_store(store, self.name)  # names the store's own type, not the wrapper's
        return BoundedStore(store, self.seconds, self.name)  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class BoundedStore:
    """A connected store whose async contract operations (and aclose) are time-bounded, its
    streaming writers' too; every other attribute is the wrapped store's own."""

    def __init__(self, store: object, seconds: float, adapter_name: str) -> None:
        self.wrapped = store
        _bound(self, store, (*STORE_OPERATIONS, "aclose"), seconds, adapter_name)
        writer = getattr(store, "writer", None)
        if inspect.iscoroutinefunction(writer):

            async def bounded_writer(*args: Any, **kwargs: Any) -> BoundedWriter:
                return BoundedWriter(await writer(*args, **kwargs), seconds, adapter_name)

            self.writer = bounded_writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class BoundedWriter:
    """A streaming writer whose operations are time-bounded: a flush waiting forever on the
    writer's own lock would otherwise stall the run silently. Opening and closing it are
    not: a writer may enter a task group when opened and leave it in `aclose`, which
    must happen in the caller's own cancel scope, not inside a bound's."""

    def __init__(self, writer: object, seconds: float, adapter_name: str) -> None:
        self.wrapped = writer
        _bound(self, writer, WRITER_OPERATIONS, seconds, adapter_name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def _bound(
    wrapper: object, wrapped: object, names: tuple[str, ...], seconds: float, adapter_name: str
) -> None:
    for name in names:
        operation = getattr(wrapped, name, None)
        if inspect.iscoroutinefunction(operation):
            setattr(wrapper, name, _bounded(operation, name, seconds, adapter_name))


def _bounded(
    operation: Callable[..., Awaitable[Any]], name: str, seconds: float, adapter_name: str
) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        what = f"adapter {adapter_name!r}: {name}({_arguments(args, kwargs)})"
        return await bounded_call(what, seconds, operation, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return ", ".join(shown)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_ARGUMENT else text[: _SHOWN_ARGUMENT - 3] + "..."
