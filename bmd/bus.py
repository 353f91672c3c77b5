"""In-process pub/sub: named topics, async-iterator subscriptions, latest value replayed to late subscribers.

A publisher never waits: each subscriber has a bounded queue, and when it is full the oldest item is dropped
and the subscriber's ``dropped`` counter says so; the bus's ``dropped`` counts every drop of a topic since
start, kept when the subscriber goes (``bmd_bus_dropped_total`` reads it, and a counter never goes down).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_CLOSED = object()


@dataclass(eq=False)
class Subscription:
    """One subscriber's view of one topic. Iterate it with ``async for``; ``close()`` ends the iteration."""

    topic: str
    maxlen: int
    _bus: Bus
    _items: collections.deque[Any] = field(default_factory=collections.deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    closed: bool = False
    # Also set when an item is queued: a subscriber that drains on its own terms waits on it (with its other
    # reasons to wake) rather than in ``get``.
    wake: asyncio.Event | None = None

    def put(self, item: Any) -> None:
        """Queue an item (the bus delivers through this); the oldest is dropped and counted when full."""
        if len(self._items) >= self.maxlen:
            self._items.popleft()
            self.dropped += 1
            self._bus.dropped[self.topic] += 1
        self._items.append(item)
        self._ready.set()
        if self.wake is not None:
            self.wake.set()

    async def get(self) -> Any:
        """The next item; raises StopAsyncIteration once the subscription is closed and drained."""
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is _CLOSED:
            self.closed = True
            raise StopAsyncIteration
        return item

    def drain(self) -> list[Any]:
        """Every item queued now, without waiting (empty once closed)."""
        items = [item for item in self._items if item is not _CLOSED]
        if len(items) != len(self._items):
            self.closed = True
        self._items.clear()
        return items

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self.get()

    def close(self) -> None:
        if not self.closed:
            self._bus.unsubscribe(self)
            self._items.append(_CLOSED)
            self._ready.set()
            if self.wake is not None:
                self.wake.set()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()


class Bus:
    """Topics are created on first use. ``latest(topic)`` is the last published payload (or None)."""

    def __init__(self, queue_size: int = 16) -> None:
        self.queue_size = queue_size
        self._subs: dict[str, list[Subscription]] = collections.defaultdict(list)
        self._latest: dict[str, Any] = {}
        self.published: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()  # by topic, since start

    def publish(self, topic: str, payload: Any) -> None:
        self._latest[topic] = payload
        self.published[topic] += 1
        for sub in self._subs.get(topic, ()):
            sub.put(payload)

    def latest(self, topic: str) -> Any:
        return self._latest.get(topic)

    def subscribe(
        self, topic: str, *, replay: bool = True, queue_size: int | None = None, wake: asyncio.Event | None = None
    ) -> Subscription:
        """``wake``: an event set whenever an item is queued (see ``Subscription.wake``)."""
        sub = Subscription(topic=topic, maxlen=queue_size or self.queue_size, _bus=self, wake=wake)
        if replay and topic in self._latest:
            sub.put(self._latest[topic])
        self._subs[topic].append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.remove(sub)

    def close(self) -> None:
        """End every subscription (their iterations stop after draining what is queued)."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()

    def stats(self) -> dict[str, Any]:
        return {
            topic: {
                "published": self.published[topic],
                "subscribers": len(subs),
                "dropped": sum(s.dropped for s in subs),
            }
            for topic, subs in self._subs.items()
        }
