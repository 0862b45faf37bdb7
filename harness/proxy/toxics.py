"""Toxic definitions (types, attributes, validation) and their per-chunk behaviours.

A behaviour is a coroutine run once per connection and direction; it pulls items from
its inbox and emits them onward, so it can delay, split, drop or close exactly like a
Toxiproxy toxic goroutine. What it is holding when interrupted is flushed onward by the
link, never dropped.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.proxy.errors import BadRequest

STREAMS = ("upstream", "downstream")

TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}


class Marker(enum.Enum):
    """Non-data items travelling through a chain behind the data they follow."""

    EOF = "eof"  # close the destination (after what precedes it)
    RESET = "reset"  # close the destination with a TCP reset


@dataclass(slots=True)
class Chunk:
    """Bytes plus the time they count from (read time, or release time after a latency)."""

    data: bytes
    ts: float


Item = Chunk | Marker


@dataclass(frozen=True)
class ToxicSpec:
    """One configured toxic; immutable so that live links can share it safely."""

    name: str
    type: str
    stream: str
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


def parse_stream(value: object) -> str:
    """Accept `upstream`/`downstream` (and Toxiproxy's `up`/`down`), any case."""
    text = value.lower() if isinstance(value, str) else ""
    text = {"up": "upstream", "down": "downstream"}.get(text, text)
    if text not in STREAMS:
        raise BadRequest("stream was invalid, can be either upstream or downstream")
    return text


def check_type(toxic_type: object) -> str:
    if not isinstance(toxic_type, str) or toxic_type not in TOXIC_ATTRIBUTES:
        raise BadRequest("invalid toxic type")
    return toxic_type


def merge_attributes(toxic_type: str, base: Mapping[str, int], given: object) -> dict[str, int]:
    """Every attribute of the type, `given` over `base` over 0; unknown keys ignored."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise BadRequest("bad request body: attributes must be an object")
    merged = {key: int(base.get(key, 0)) for key in TOXIC_ATTRIBUTES[toxic_type]}
    for key in merged:
        if key in given:
            value = given[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"bad request body: attribute {key!r} must be an integer")
            if value < 0:
                raise BadRequest(f"bad request body: attribute {key!r} must not be negative")
            merged[key] = value
    return merged


def check_toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("bad request body: toxicity must be a number")
    return float(value)


class Io(Protocol):
    """What a behaviour sees of its stage (implemented by link.StageIO)."""

    attrs: Mapping[str, int]
    state: dict[str, int]

    async def next(self, timeout: float | None = None) -> Item | None: ...  # noqa: ASYNC109
    def emit(self, item: Item) -> None: ...
    def hold(self, item: Item | None) -> None: ...
    def drop(self, item: Item) -> None: ...


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def latency(io: Io) -> None:
    """Release each chunk at its timestamp + latency ± jitter; sequential, so never
    reordered, and the released chunk carries its release time so stacked latencies add."""
    while True:
        item = await _next(io)
        if isinstance(item, Chunk):
            jitter = io.attrs["jitter"]
            delay = io.attrs["latency"] + (random.uniform(-jitter, jitter) if jitter else 0)
            release = item.ts + delay / 1000
            await _sleep_until(release)
            item.ts = max(item.ts, release)
        io.emit(item)


async def bandwidth(io: Io) -> None:
    """Deliver at `rate` KB/s in pieces of at most 100 ms worth; rate 0 stalls."""
    free_at = time.monotonic()
    while True:
        item = await _next(io)
        if not isinstance(item, Chunk):
            io.emit(item)
            continue
        rate = io.attrs["rate"] * 1000  # bytes per second
        if rate <= 0:
            await asyncio.Future()  # stalled until the toxic is updated or removed
        data = item.data
        while data:
            piece, data = data[: max(1, rate // 10)], data[max(1, rate // 10) :]
            free_at = max(free_at, time.monotonic()) + len(piece) / rate
            await _sleep_until(free_at)
            io.emit(Chunk(piece, item.ts))
            io.hold(Chunk(data, item.ts) if data else None)


async def slow_close(io: Io) -> None:
    """Pass data; delay the close that follows the source's EOF."""
    while True:
        item = await _next(io)
        if item is Marker.EOF:
            await asyncio.sleep(io.attrs["delay"] / 1000)
        io.emit(item)


async def timeout(io: Io) -> None:
    """Drop all data; close `timeout` ms after the last chunk (never when 0)."""
    limit = io.attrs["timeout"] / 1000
    while True:
        item = await io.next(limit if limit > 0 else None)
        if item is None:
            io.emit(Marker.EOF)
            break
        if isinstance(item, Chunk):
            io.drop(item)
            continue
        io.emit(item)
        break
    await _discard_forever(io)


async def reset_peer(io: Io) -> None:
    """On the first chunk or EOF: discard it, wait `timeout` ms, reset the connection."""
    item = await _next(io)
    io.drop(item)
    io.hold(Marker.RESET)  # a reset once triggered still happens if the toxic is removed
    await asyncio.sleep(io.attrs["timeout"] / 1000)
    io.emit(Marker.RESET)
    await _discard_forever(io)


async def slicer(io: Io) -> None:
    """Split chunks into pieces of average_size ± size_variation bytes, `delay` µs apart."""
    while True:
        item = await _next(io)
        if not isinstance(item, Chunk) or io.attrs["average_size"] <= 0:
            io.emit(item)
            continue
        data, due = item.data, time.monotonic()
        while data:
            variation = io.attrs["size_variation"]
            size = io.attrs["average_size"] + random.randint(-variation, variation)
            piece, data = data[: max(1, size)], data[max(1, size) :]
            io.emit(Chunk(piece, item.ts))
            io.hold(Chunk(data, item.ts) if data else None)
            if data:
                # Deadlines accumulate, so microsecond delays below the loop's 1 ms timer
                # granularity still add up to the right total (released in small bursts).
                due += io.attrs["delay"] / 1_000_000
                await _sleep_until(due)


async def limit_data(io: Io) -> None:
    """Deliver exactly `bytes` bytes per connection and direction, then close."""
    while True:
        item = await _next(io)
        if not isinstance(item, Chunk):
            io.emit(item)
            break
        room = io.attrs["bytes"] - io.state.get("sent", 0)
        if room > 0:
            piece = item.data[:room]
            io.state["sent"] = io.state.get("sent", 0) + len(piece)
            io.emit(Chunk(piece, item.ts))
            if len(piece) < len(item.data):
                io.drop(Chunk(item.data[len(piece) :], item.ts))
        else:
            io.drop(item)
        if io.state.get("sent", 0) >= io.attrs["bytes"]:
            io.emit(Marker.EOF)
            break
    await _discard_forever(io)


async def _next(io: Io) -> Item:
    item = await io.next()
    assert item is not None  # only a wait with a timeout returns None
    return item


async def _discard_forever(io: Io) -> None:
    while True:
        io.drop(await _next(io))


BEHAVIOURS: dict[str, Callable[[Io], Awaitable[None]]] = {
    "latency": latency,
    "bandwidth": bandwidth,
    "slow_close": slow_close,
    "timeout": timeout,
    "reset_peer": reset_peer,
    "slicer": slicer,
    "limit_data": limit_data,
}
