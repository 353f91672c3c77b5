"""The PostgreSQL bus (bmd/pg_bus.py): a node change committed in one service reaches the other services'
``nodes`` topic through LISTEN/NOTIFY, on the real PostgreSQL (skipped without BMD_TEST_POSTGRES_URL)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import delete, update

from bmd.bus import Subscription
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, bm_nodes_table
from bmd.node_events import TOPIC, NodeView, note_deleted, note_nodes
from bmd.pg_bus import PAYLOAD_LIMIT, listen_dsn, payloads
from bmd.service import open_context
from tests.conftest import make_settings

Pair = tuple[AppContext, AppContext]


def test_payloads_are_chunked_under_the_notify_limit() -> None:
    views = [NodeView(node_id=i, version=i % 7 + 1) for i in range(1, 5001)]
    got = payloads("svc-a", views)
    assert len(got) > 1
    assert all(len(p.encode()) < PAYLOAD_LIMIT for p in got)
    decoded = [json.loads(p) for p in got]
    assert {d["from"] for d in decoded} == {"svc-a"}
    assert sorted(tuple(n) for d in decoded for n in d["nodes"]) == [(v.node_id, v.version) for v in views]


@pytest.fixture
async def two(postgres_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    """Services A and B (two service.host values) on one PostgreSQL database, both on the postgresql bus."""
    engine = make_engine(make_settings(tmp_path, db_url=postgres_url).database)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    async with AsyncExitStack() as stack:
        ctxs = [
            await stack.enter_async_context(
                open_context(
                    make_settings(
                        tmp_path / name, db_url=postgres_url, service={"host": name}, bus={"backend": "postgresql"}
                    )
                )
            )
            for name in ("svc-a", "svc-b")
        ]
        yield ctxs[0], ctxs[1]


async def enroll(ctx: AppContext, count: int) -> list[int]:
    async with ctx.sessionmaker.begin() as session:
        nodes = [
            BareMetalNode(uuid=str(uuid.uuid4()), service_host="svc-a", cpus=8, memory_mb=4096, local_gb=100)
            for _ in range(count)
        ]
        session.add_all(nodes)
    return [n.id for n in nodes]


async def set_maintenance(ctx: AppContext, ids: list[int], on: bool) -> dict[int, int]:
    """One committed write of the nodes through ``ctx`` (as every writer: the update, then note_nodes);
    their new versions."""
    async with ctx.sessionmaker.begin() as session:
        await session.execute(update(bm_nodes_table).where(bm_nodes_table.c.id.in_(ids)).values(maintenance=on))
        views = await note_nodes(session, ids)
    return {v.node_id: v.version for v in views}


async def collect(sub: Subscription, want: dict[int, int], within: float = 10.0) -> dict[int, NodeView]:
    """Views from ``sub`` until every node of ``want`` is seen at its version or newer (or the deadline)."""
    seen: dict[int, NodeView] = {}
    async with asyncio.timeout(within):
        while any(seen.get(i) is None or seen[i].version < v for i, v in want.items()):
            for view in await sub.get():
                if view.node_id in want and view.newer_than(seen.get(view.node_id)):
                    seen[view.node_id] = view
    return seen


async def test_a_change_in_one_service_reaches_the_other(two: Pair) -> None:
    a, b = two
    [node] = await enroll(a, 1)
    async with b.bus.subscribe(TOPIC, replay=False, queue_size=1000) as sub_b:
        async with a.bus.subscribe(TOPIC, replay=False, queue_size=1000) as sub_a:
            start = time.perf_counter()
            versions = await set_maintenance(a, [node], True)
            seen = await collect(sub_b, versions)
            latency = time.perf_counter() - start
            print(f"pg bus: commit in svc-a to view on svc-b's topic in {latency * 1000:.1f} ms")
            assert seen[node].maintenance and seen[node].version == versions[node]
            assert latency < 0.5
            # A's own view came once, from its own commit: it skips its own notification
            assert [v.node_id for batch in sub_a.drain() for v in batch] == [node]
        # and back: B writes, A sees it
        async with a.bus.subscribe(TOPIC, replay=False, queue_size=1000) as sub_a:
            versions = await set_maintenance(b, [node], False)
            seen = await collect(sub_a, versions)
            assert not seen[node].maintenance and seen[node].version == versions[node]
    assert b.node_listener is not None and b.node_listener.received >= 1


async def test_a_burst_of_5000_changes_is_delivered_whole(two: Pair) -> None:
    a, b = two
    ids = await enroll(a, 5000)
    async with b.bus.subscribe(TOPIC, replay=False, queue_size=10_000) as sub_b:
        start = time.perf_counter()
        versions = await set_maintenance(a, ids, True)
        seen = await collect(sub_b, versions, within=30.0)
        print(f"pg bus: 5000 node changes in svc-a seen on svc-b in {(time.perf_counter() - start) * 1000:.0f} ms")
    assert len(seen) == 5000
    assert all(v.maintenance and v.version == versions[v.node_id] for v in seen.values())


async def test_the_listener_reconnects_and_resyncs(two: Pair, postgres_url: str) -> None:
    a, b = two
    listener = b.node_listener
    assert listener is not None
    [node] = await enroll(a, 1)
    versions = await set_maintenance(a, [node], True)
    async with b.bus.subscribe(TOPIC, replay=False, queue_size=1000) as sub_b:
        await collect(sub_b, versions)
        pid = listener.backend_pid
        assert pid is not None
        conn = await asyncpg.connect(listen_dsn(postgres_url))
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        # nothing written meanwhile: only the resync after the reconnect publishes the node again
        start = time.perf_counter()
        seen = await collect(sub_b, versions)
        print(f"pg bus: listener terminated, reconnected and resynced in {(time.perf_counter() - start) * 1000:.0f} ms")
        assert seen[node].version == versions[node] and seen[node].maintenance
        assert listener.reconnects == 1
        new_pid = listener.backend_pid
        assert new_pid is not None and new_pid != pid
        # and after the reconnect, notifications flow again
        versions = await set_maintenance(a, [node], False)
        seen = await collect(sub_b, versions)
        assert not seen[node].maintenance and seen[node].version == versions[node]


async def test_a_deleted_node_reaches_the_other_service_deleted(two: Pair) -> None:
    a, b = two
    [node] = await enroll(a, 1)
    versions = await set_maintenance(a, [node], True)
    async with b.bus.subscribe(TOPIC, replay=False, queue_size=1000) as sub_b:
        await collect(sub_b, versions)
        async with a.sessionmaker.begin() as session:  # as the API's delete does
            await note_deleted(session, [node])
            await session.execute(delete(bm_nodes_table).where(bm_nodes_table.c.id == node))
        seen = await collect(sub_b, {node: versions[node] + 1})
    assert seen[node].deleted and seen[node].version == versions[node] + 1


async def test_more_waiting_than_max_pending_becomes_a_resync(two: Pair) -> None:
    a, b = two
    listener = b.node_listener
    assert listener is not None
    listener.max_pending = 100  # bounded: a burst larger than this is caught up by one full read
    ids = await enroll(a, 1000)
    async with b.bus.subscribe(TOPIC, replay=False, queue_size=10_000) as sub_b:
        versions = await set_maintenance(a, ids, True)
        seen = await collect(sub_b, versions)
    assert len(seen) == 1000 and all(v.maintenance for v in seen.values())
    assert listener.resyncs >= 1
