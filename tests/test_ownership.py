"""Node ownership by a consistent hash ring (bmd.ownership) and the loop that writes it into bm_nodes
(bmd.tasks.node_ownership): the ring's properties, then the loop on a real SQLite file (and PostgreSQL when
BMD_TEST_POSTGRES_URL is set) with three services, one of which goes silent and comes back."""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.bus import Bus
from bmd.config import DatabaseSettings
from bmd.db.engine import Sessionmaker, make_engine, make_sessionmaker
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Service, utcnow
from bmd.node_events import TOPIC, NodeEvents, NodeView
from bmd.ownership import HashRing, assign_owners
from bmd.service import open_context
from bmd.tasks.node_ownership import NodeOwnership
from tests.conftest import make_settings, node_body

DOWN_TIME = 60.0


def uuids(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def owners(ring: HashRing, keys: list[str]) -> dict[str, str]:
    return {k: ring.owner(k) for k in keys}


# -- the ring ----------------------------------------------------------------------------------------------


def test_the_ring_is_deterministic_whatever_the_order_of_hosts_or_the_process() -> None:
    keys = uuids(1000)
    here = owners(HashRing(["svc-a", "svc-b", "svc-c"]), keys)
    assert here == owners(HashRing(["svc-c", "svc-a", "svc-b"]), keys)
    # Another interpreter with another hash seed (Python's hash() would differ there) gives the same owners.
    code = (
        "import sys; from bmd.ownership import HashRing; r = HashRing(['svc-b', 'svc-c', 'svc-a']); "
        "print('\\n'.join(r.owner(k) for k in sys.stdin.read().split()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], input="\n".join(keys), capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == [here[k] for k in keys]


def test_a_ring_needs_a_host() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        HashRing([])


@pytest.mark.parametrize(
    "hosts",
    [
        ["svc-a", "svc-b", "svc-c"],
        ["bmd-1", "bmd-2", "bmd-3"],
        ["a", "b", "c"],
        ["x.example", "y.example", "z.example"],
    ],
)
def test_ten_thousand_nodes_spread_evenly_over_three_hosts(hosts: list[str]) -> None:
    counts = collections.Counter(owners(HashRing(hosts), uuids(10_000)).values())
    assert set(counts) == set(hosts)
    for host, n in counts.items():  # within 10% of a third (measured with 512 points: 4.1% to 6.9% off)
        assert abs(n - 10_000 / 3) < 10_000 / 3 * 0.10, (host, counts)


def test_a_host_joining_takes_about_a_quarter_and_only_from_the_others() -> None:
    keys = uuids(10_000)
    before = owners(HashRing(["svc-a", "svc-b", "svc-c"]), keys)
    after = owners(HashRing(["svc-a", "svc-b", "svc-c", "svc-d"]), keys)
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "svc-d" for k in moved)  # nothing moves between the old hosts
    assert 0.18 < len(moved) / len(keys) < 0.32


def test_a_host_leaving_gives_away_only_its_own_nodes() -> None:
    keys = uuids(10_000)
    before = owners(HashRing(["svc-a", "svc-b", "svc-c"]), keys)
    after = owners(HashRing(["svc-a", "svc-b"]), keys)
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "svc-c"}
    assert 0.28 < len(moved) / len(keys) < 0.39
    gained = collections.Counter(after[k] for k in moved)  # the survivors share them, not one takes all
    assert min(gained.values()) > len(moved) * 0.35


def test_assign_owners_names_only_the_nodes_that_change() -> None:
    ring = HashRing(["svc-a", "svc-b"])
    keys = uuids(4)
    nodes = {i: (k, ring.owner(k)) for i, k in enumerate(keys)}
    nodes[0] = (keys[0], "gone")
    assert assign_owners(ring, nodes) == {0: ring.owner(keys[0])}


# -- the loop on a real database ---------------------------------------------------------------------------


class Statements:
    """The SQL statements an engine sends (an executemany counts once), by verb."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.split(None, 1)[0].upper())

    def take(self) -> collections.Counter[str]:
        counts = collections.Counter(s for s in self.seen if s in ("SELECT", "UPDATE", "INSERT", "DELETE"))
        self.seen.clear()
        return counts


async def setup(sm: Sessionmaker, n_nodes: int) -> None:
    now = utcnow()
    async with sm.begin() as session:
        session.add_all(Service(host=h, last_heartbeat=now) for h in ("svc-a", "svc-b", "svc-c"))
        session.add_all(
            BareMetalNode(uuid=u, service_host="svc-a", cpus=1, memory_mb=1, local_gb=1) for u in uuids(n_nodes)
        )


async def owner_of(sm: Sessionmaker) -> dict[int, str]:
    async with sm() as session:
        rows = await session.execute(select(BareMetalNode.id, BareMetalNode.service_host))
        return {node_id: host for node_id, host in rows}


async def heartbeat(sm: Sessionmaker, host: str, age: float) -> None:
    async with sm.begin() as session:
        stamp = utcnow() - dt.timedelta(seconds=age)
        await session.execute(update(Service).where(Service.host == host).values(last_heartbeat=stamp))


async def check_takeover_and_return(engine: AsyncEngine, n_nodes: int = 900) -> None:
    bus = Bus()
    sm = make_sessionmaker(engine, NodeEvents(bus))
    await setup(sm, n_nodes)
    loop = NodeOwnership(sm, DOWN_TIME, interval=10.0)
    statements = Statements(engine)

    await loop.run_once()  # all three live: from all on svc-a to a third each
    sql = statements.take()
    spread = await owner_of(sm)
    counts = collections.Counter(spread.values())
    assert set(counts) == {"svc-a", "svc-b", "svc-c"} and min(counts.values()) > n_nodes * 0.25, counts
    published: list[NodeView] = bus.latest(TOPIC)
    assert {v.node_id for v in published} == {i for i, h in spread.items() if h != "svc-a"}
    assert all(v.version == 2 for v in published)  # the write bumped each moved row's version
    moved = len(published)  # one UPDATE (executemany); reads: services, bm_nodes, the views 500 at a time
    assert sql == {"UPDATE": 1, "SELECT": 2 + -(-moved // 500)}, (sql, moved)

    await heartbeat(sm, "svc-c", age=DOWN_TIME + 5)  # svc-c goes silent: its nodes move within one pass
    await loop.run_once()
    after = await owner_of(sm)
    of_c = {i for i, h in spread.items() if h == "svc-c"}
    assert "svc-c" not in after.values()
    assert {i for i in after if after[i] != spread[i]} == of_c  # only svc-c's nodes moved
    assert min(collections.Counter(after[i] for i in of_c).values()) > len(of_c) * 0.3  # to both survivors
    assert {v.node_id for v in bus.latest(TOPIC)} == of_c

    statements.take()
    await loop.run_once()  # nothing changed: nothing written, nothing published
    assert statements.take() == {"SELECT": 2}
    assert await owner_of(sm) == after and {v.node_id for v in bus.latest(TOPIC)} == of_c

    await heartbeat(sm, "svc-c", age=0)  # it comes back: the same third returns to it, nothing else moves
    await loop.run_once()
    assert await owner_of(sm) == spread
    assert abs(len(of_c) - n_nodes / 3) < n_nodes / 3 * 0.15

    for host in ("svc-a", "svc-b", "svc-c"):  # nobody live: the nodes keep their last owner
        await heartbeat(sm, host, age=DOWN_TIME + 5)
    await loop.run_once()
    assert await owner_of(sm) == spread


@pytest.fixture
async def sqlite_engine(db_file: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{db_file}"))
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_silent_service_loses_its_nodes_and_gets_a_third_back_on_sqlite(sqlite_engine: AsyncEngine) -> None:
    await check_takeover_and_return(sqlite_engine)


@pytest.mark.postgres
async def test_a_silent_service_loses_its_nodes_and_gets_a_third_back_on_postgresql(postgres_url: str) -> None:
    """In a database of its own: the run's shared one holds other tests' services, live ones among them."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = f"{url.database}_ring"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        engine = make_engine(DatabaseSettings(url=url.set(database=name).render_as_string(hide_password=False)))
        try:
            await upgrade(engine)
            await check_takeover_and_return(engine)
        finally:
            await engine.dispose()
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.mark.parametrize(("ownership", "registered"), [("static", False), ("ring", True)])
async def test_the_loop_runs_only_with_ring_ownership(
    tmp_path: Path, db_file: Path, ownership: str, registered: bool
) -> None:
    settings = make_settings(tmp_path, service={"ownership": ownership})
    async with open_context(settings) as ctx:
        assert ("node_ownership" in ctx.runner.records) is registered


# -- node groups -------------------------------------------------------------------------------------------


async def test_a_group_is_owned_only_by_the_services_that_serve_it(sqlite_engine: AsyncEngine) -> None:
    """Nodes of group "rack11" go only to the services serving it, the others' nodes ("" group) to the rest;
    when every server of rack11 is down its nodes stay where they were (a warning names the group)."""
    sm = make_sessionmaker(sqlite_engine, NodeEvents(Bus()))
    now = utcnow()
    keys = uuids(600, seed=7)
    async with sm.begin() as session:
        session.add_all(
            [
                Service(host="svc-a", last_heartbeat=now, groups=[""]),
                Service(host="svc-b", last_heartbeat=now, groups=[""]),
                Service(host="svc-r", last_heartbeat=now, groups=["rack11"]),
                Service(host="svc-s", last_heartbeat=now, groups=["rack11", ""]),
            ]
        )
        session.add_all(
            BareMetalNode(
                uuid=u,
                service_host="svc-a",
                conductor_group="rack11" if i % 3 == 0 else "",
                cpus=1,
                memory_mb=1,
                local_gb=1,
            )
            for i, u in enumerate(keys)
        )
    loop = NodeOwnership(sm, DOWN_TIME, interval=10.0)
    await loop.run_once()

    async def by_group() -> dict[str, collections.Counter[str]]:
        async with sm() as session:
            rows = await session.execute(select(BareMetalNode.conductor_group, BareMetalNode.service_host))
            out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
            for group, host in rows:
                out[group][host] += 1
            return out

    spread = await by_group()
    assert set(spread["rack11"]) == {"svc-r", "svc-s"} and sum(spread["rack11"].values()) == 200
    assert set(spread[""]) == {"svc-a", "svc-b", "svc-s"} and min(spread[""].values()) > 400 * 0.25
    before = await owner_of(sm)
    async with sm() as session:
        rack11_ids = (
            (await session.execute(select(BareMetalNode.id).where(BareMetalNode.conductor_group == "rack11")))
            .scalars()
            .all()
        )

    await heartbeat(sm, "svc-r", age=DOWN_TIME + 5)
    await heartbeat(sm, "svc-s", age=DOWN_TIME + 5)
    with capture_logs() as logs:
        await loop.run_once()
    after = await owner_of(sm)
    assert (await by_group())["rack11"] == spread["rack11"]  # unserved: nobody to give them to
    moved = {i for i in after if after[i] != before[i]}
    assert moved == {i for i, h in before.items() if h == "svc-s"} - set(rack11_ids)  # its "" nodes only
    assert {after[i] for i in moved} <= {"svc-a", "svc-b"}
    assert [e for e in logs if e["event"] == "ownership_group_unserved"] == [
        {"event": "ownership_group_unserved", "group": "rack11", "nodes": 200, "log_level": "warning"}
    ]


async def test_under_the_ring_service_host_is_derived_and_a_group_pins_the_node(tmp_path: Path, db_file: Path) -> None:
    """The API refuses service_host (400 naming it and how to pin instead), takes conductor_group, and the
    next ownership pass gives the node to a service serving its group."""
    settings = make_settings(tmp_path, service={"ownership": "ring", "host": "svc-a", "groups": ["", "row2"]})
    async with open_context(settings) as ctx:
        auth = {"Authorization": f"Bearer {ctx.api_token}"}
        async with ctx.sessionmaker.begin() as session:  # another live service, serving only ""
            session.add(Service(host="svc-b", last_heartbeat=utcnow(), groups=[""]))
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            refused = await client.post("/v1/nodes", json=node_body(1, service_host="svc-b"), headers=auth)
            assert refused.status == 400
            body = await refused.json()
            assert body["field"] == "service_host" and "conductor_group" in body["message"]
            created = []
            for i, u in enumerate(uuids(6, seed=3), start=1):  # fixed uuids: the same owners every run
                created.append(await (await client.post("/v1/nodes", json=node_body(i, uuid=u), headers=auth)).json())
            assert all(n["conductor_group"] == "" for n in created)
            await ctx.runner.run_pass("node_ownership")
            async with ctx.sessionmaker() as session:
                hosts = set((await session.execute(select(BareMetalNode.service_host))).scalars())
            assert hosts == {"svc-a", "svc-b"}  # 6 nodes over two services: both get some
            owned = {n["id"]: await _owner(ctx, n["id"]) for n in created}
            on_b = next(n for n in created if owned[n["id"]] == "svc-b")
            patched = await client.patch(f"/v1/nodes/{on_b['id']}", json={"service_host": "svc-a"}, headers=auth)
            assert patched.status == 400
            pinned = await client.patch(f"/v1/nodes/{on_b['id']}", json={"conductor_group": "row2"}, headers=auth)
            assert pinned.status == 200 and (await pinned.json())["conductor_group"] == "row2"
            await ctx.runner.run_pass("node_ownership")
            assert await _owner(ctx, on_b["id"]) == "svc-a"  # the only service serving row2
            bad = await client.patch(f"/v1/nodes/{on_b['id']}", json={"conductor_group": "row 2"}, headers=auth)
            assert bad.status == 400 and (await bad.json())["field"] == "conductor_group"


async def _owner(ctx: Any, node_id: int) -> str:
    async with ctx.sessionmaker() as session:
        return str(
            (await session.execute(select(BareMetalNode.service_host).where(BareMetalNode.id == node_id))).scalar_one()
        )
