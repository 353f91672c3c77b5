"""The in-process bus: topics, async iteration, latest-value replay, bounded queues."""

from __future__ import annotations

import asyncio

from bmd.bus import Bus


async def test_subscriber_receives_in_order() -> None:
    bus = Bus()
    sub = bus.subscribe("t")
    for i in range(3):
        bus.publish("t", i)
    assert [await sub.get() for _ in range(3)] == [0, 1, 2]


async def test_topics_are_separate() -> None:
    bus = Bus()
    a, b = bus.subscribe("a"), bus.subscribe("b")
    bus.publish("a", "for-a")
    bus.publish("b", "for-b")
    assert await a.get() == "for-a"
    assert await b.get() == "for-b"


async def test_late_subscriber_gets_latest_value_only() -> None:
    bus = Bus()
    bus.publish("caps", [1])
    bus.publish("caps", [2])
    late = bus.subscribe("caps")
    assert await late.get() == [2]
    assert bus.latest("caps") == [2]
    no_replay = bus.subscribe("caps", replay=False)
    bus.publish("caps", [3])
    assert await no_replay.get() == [3]


async def test_slow_subscriber_never_blocks_publisher_and_counts_drops() -> None:
    bus = Bus(queue_size=4)
    slow = bus.subscribe("t")
    fast = bus.subscribe("t", queue_size=100)
    for i in range(10):
        bus.publish("t", i)  # synchronous: cannot block
    assert slow.dropped == 6
    assert [await slow.get() for _ in range(4)] == [6, 7, 8, 9]
    assert fast.dropped == 0
    assert bus.stats()["t"] == {"published": 10, "subscribers": 2, "dropped": 6}


async def test_async_iteration_ends_on_close() -> None:
    bus = Bus()
    sub = bus.subscribe("t")
    got: list[int] = []

    async def consume() -> None:
        async for item in sub:
            got.append(item)

    task = asyncio.create_task(consume())
    bus.publish("t", 1)
    bus.publish("t", 2)
    bus.close()
    async with asyncio.timeout(5):
        await task
    assert got == [1, 2]
    bus.publish("t", 3)  # no subscribers left: nothing queued anywhere
    assert bus.stats()["t"]["subscribers"] == 0


async def test_waiting_subscriber_wakes_on_publish() -> None:
    bus = Bus()
    sub = bus.subscribe("t")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)  # let it block
    assert not waiter.done()
    bus.publish("t", "x")
    async with asyncio.timeout(5):
        assert await waiter == "x"


async def test_context_manager_unsubscribes() -> None:
    bus = Bus()
    async with bus.subscribe("t") as sub:
        bus.publish("t", 1)
        assert await sub.get() == 1
    assert bus.stats()["t"]["subscribers"] == 0
