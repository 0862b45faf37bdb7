"""A clock the scenario drives: the `Timers` a streaming writer's debounce window runs on.

A writer given a `VirtualClock` waits on it instead of on real time, so a scenario
decides when a window ends (`await clock.advance(seconds)`) and no scenario sleeps to
let a timer fire. A store in another process cannot share this object: its driver keeps
a virtual clock of its own, which `follow` keeps in step (every advance is sent on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

Follower = Callable[[float], Awaitable[None]]
"""Told every advance, in seconds, and awaited (a driver process's clock)."""


@dataclass(order=True)
class _Sleeper:
    deadline: float
    event: anyio.Event = field(compare=False, default_factory=anyio.Event)


class VirtualClock:
    """Seconds since the clock was made, moved only by `advance`; anyio-compatible."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[_Sleeper] = []
        self._followers: list[Follower] = []

    def now(self) -> float:
        return self._now

    @property
    def armed(self) -> int:
        """How many sleeps (armed timers) wait for a later time."""
        return len(self._sleepers)

    async def sleep_until(self, deadline: float) -> None:
        """Until the clock reads `deadline` (cancellable, like anyio.sleep_until)."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(deadline)
        self._sleepers.append(sleeper)
        try:
            await sleeper.event.wait()
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def advance(self, seconds: float) -> None:
        """Move time on: every sleep now due wakes (earliest first), every follower is told.

        Returns once the woken sleepers are runnable and the followers answered; what the
        woken tasks then do is for the scenario to observe (a statement at the gate).
        """
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; advance({seconds}) is negative")
        self._now += seconds
        due = sorted(s for s in self._sleepers if s.deadline <= self._now)
        for sleeper in due:
            self._sleepers.remove(sleeper)
            sleeper.event.set()
        for follower in list(self._followers):
            await follower(seconds)
        await anyio.lowlevel.checkpoint()

    def follow(self, follower: Follower) -> Callable[[], None]:
        """Tell `follower` every later advance; returns the function that stops it."""
        self._followers.append(follower)
        return lambda: self._followers.remove(follower) if follower in self._followers else None
