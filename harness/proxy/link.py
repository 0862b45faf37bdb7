"""One direction of a proxied connection: an optional filter, a chain of toxic stages,
and a sink writing to the destination socket.

With no active toxic and no filter, bytes go straight from the source's read callback
to the destination's write (the fast path). Toxic changes apply to the live chain at
once; a removed or restarted stage's held items are passed on in order, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

from harness.proxy.toxics import BEHAVIOURS, Chunk, Item, Marker, ToxicSpec

log = logging.getLogger(__name__)

QUEUE_HIGH = 4 << 20  # bytes held in a chain before the source stops being read
QUEUE_LOW = QUEUE_HIGH // 4


class Endpoint(Protocol):
    """A socket as a link sees it (implemented by connection.Side)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def reset(self) -> None: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...


class Filter(Protocol):
    """Something that sees a link's bytes before its toxics (the statement gate)."""

    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


class _Stage:
    """One toxic on one link: its inbox, the item it holds, its task and state."""

    __slots__ = ("active", "current", "dead", "inbox", "spec", "state", "task", "waiter")

    def __init__(self, spec: ToxicSpec, state: dict[str, int]) -> None:
        self.spec = spec
        self.state = state
        self.active = random.random() < spec.toxicity  # rolled per connection and direction
        self.inbox: deque[Item] = deque()
        self.current: Item | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.task: asyncio.Task[None] | None = None
        self.dead = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


class StageIO:
    """The behaviour's handle on its stage (see toxics.Io)."""

    def __init__(self, link: Link, stage: _Stage) -> None:
        self._link = link
        self._stage = stage

    @property
    def attrs(self) -> Mapping[str, int]:
        return self._stage.spec.attributes

    @property
    def state(self) -> dict[str, int]:
        return self._stage.state

    async def next(self, timeout: float | None = None) -> Item | None:  # noqa: ASYNC109
        stage = self._stage
        stage.current = None
        loop = asyncio.get_running_loop()
        while not stage.inbox:
            waiter: asyncio.Future[bool] = loop.create_future()
            stage.waiter = waiter
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                arrived = await waiter
            finally:
                stage.waiter = None
                if timer is not None:
                    timer.cancel()
            if not arrived:
                return None
        stage.current = stage.inbox.popleft()
        return stage.current

    def emit(self, item: Item) -> None:
        if not self._stage.dead:
            self._link.deliver_after(self._stage, item)

    def hold(self, item: Item | None) -> None:
        self._stage.current = item

    def drop(self, item: Item) -> None:
        if isinstance(item, Chunk):
            self._link.account(-len(item.data))


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Link:
    """Client-to-server (`upstream`) or server-to-client (`downstream`) data path."""

    def __init__(
        self,
        direction: str,
        src: Endpoint,
        dst: Endpoint,
        specs: list[ToxicSpec],
        on_failure: Callable[[], None],
    ) -> None:
        self.direction = direction
        self.filter: Filter | None = None
        self._src = src
        self._dst = dst
        self._on_failure = on_failure
        self._stages: list[_Stage] = []
        self._active = 0
        self._queued = 0
        self._queue_paused = False
        self._closed = False
        self._eof_fed = False
        for spec in specs:
            self.add_toxic(spec)

    # -- input -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes read from the source socket."""
        if self.filter is None:
            self.push(data)
        else:
            self.filter.feed(data)

    def feed_eof(self) -> None:
        """The source socket reached EOF or was lost (delivered once)."""
        if self._eof_fed:
            return
        self._eof_fed = True
        if self.filter is None:
            self.push_eof()
        else:
            self.filter.feed_eof()

    def push(self, data: bytes) -> None:
        """Bytes past the filter, into the toxic chain (or straight out)."""
        if self._closed:
            return
        if not self._active:
            self._dst.write(data)
            return
        self.account(len(data))
        self._deliver(0, Chunk(data, time.monotonic()))

    def push_eof(self) -> None:
        if not self._closed:
            self._deliver(0, Marker.EOF)

    # -- toxics ------------------------------------------------------------------------
    def add_toxic(self, spec: ToxicSpec) -> None:
        stage = _Stage(spec, {})
        self._stages.append(stage)
        self._start(stage)

    def update_toxic(self, spec: ToxicSpec) -> None:
        """Restart the stage with the new settings, re-rolling toxicity; it keeps what
        it held and its per-connection state (limit_data's byte count)."""
        index = self._index(spec.name)
        old = self._stages[index]
        held = self._stop(old)
        stage = _Stage(spec, old.state)
        self._stages[index] = stage
        if stage.active:
            stage.inbox.extend(held)
            self._start(stage)
        else:
            for item in held:
                self._deliver(index + 1, item)

    def remove_toxic(self, name: str) -> None:
        index = self._index(name)
        stage = self._stages.pop(index)
        was_active = stage.active
        for item in self._stop(stage):
            self._deliver(index, item)
        if was_active and stage.spec.type == "timeout":
            self._deliver(index, Marker.EOF)  # Toxiproxy closes a timed-out link on removal

    def close(self) -> None:
        """Stop every stage; nothing more is written."""
        self._closed = True
        for stage in self._stages:
            self._stop(stage)

    # -- plumbing ----------------------------------------------------------------------
    def account(self, delta: int) -> None:
        """Track bytes inside the chain so a slow chain stops reading its source."""
        self._queued += delta
        if not self._queue_paused and self._queued > QUEUE_HIGH:
            self._queue_paused = True
            self._src.pause_reading("queue")
        elif self._queue_paused and self._queued <= QUEUE_LOW:
            self._queue_paused = False
            self._src.resume_reading("queue")

    def deliver_after(self, stage: _Stage, item: Item) -> None:
        self._deliver(self._stages.index(stage) + 1, item)

    def _deliver(self, start: int, item: Item) -> None:
        for stage in self._stages[start:]:
            if stage.active:
                stage.inbox.append(item)
                stage.wake()
                return
        self._sink(item)

    def _sink(self, item: Item) -> None:
        if isinstance(item, Chunk):
            self.account(-len(item.data))
            if not self._closed:
                self._dst.write(item.data)
            return
        if self._closed:
            return
        self._closed = True
        if item is Marker.EOF:
            self._dst.close()
        else:
            self._dst.reset()

    def _index(self, name: str) -> int:
        for index, stage in enumerate(self._stages):
            if stage.spec.name == name:
                return index
        raise KeyError(name)

    def _start(self, stage: _Stage) -> None:
        if not stage.active:
            return
        self._active += 1
        behaviour = BEHAVIOURS[stage.spec.type]
        stage.task = asyncio.get_running_loop().create_task(behaviour(StageIO(self, stage)))
        stage.task.add_done_callback(self._task_done)

    def _stop(self, stage: _Stage) -> list[Item]:
        """Cancel the stage and return what it held, oldest first."""
        if stage.dead:
            return []
        stage.dead = True
        if stage.active:
            self._active -= 1
        if stage.task is not None:
            stage.task.cancel()
        held = ([] if stage.current is None else [stage.current]) + list(stage.inbox)
        stage.current = None
        stage.inbox.clear()
        return held

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("toxic failed on %s link", self.direction, exc_info=task.exception())
            self._on_failure()
