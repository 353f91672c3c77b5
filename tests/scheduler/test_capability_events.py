"""A node's capabilities reach the schedulers through the node change events, not only through the periodic
``capabilities`` publication: a view whose capability fingerprint changed (or a node new to the scheduler)
makes the running service's HostManager read that node's capability dict at once (``follow_nodes``).

Each test runs the real service (``serve``: its loops, the scheduler's followers, its API on 127.0.0.1)
with ``host_state_interval`` an hour long and no jitter, so ``report_driver_status`` runs only its two
start-up passes (the warm-up and the runner's first): what a scheduler learns afterwards came through the
events."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.flavors import get_flavor
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode
from bmd.node_events import note_nodes
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.manager import HostManager
from bmd.service import Endpoint, serve
from tests.conftest import make_settings, node_body

HOUR = 3600.0
REPORT = "report_driver_status"
START_PASSES = 2  # the warm-up's and the runner's first


@dataclass
class Running:
    """One served bmd: its parts and an HTTP client of its API."""

    ctx: AppContext
    http: aiohttp.ClientSession

    @property
    def scheduler(self) -> HostManager:
        return self.ctx.scheduler

    @property
    def reports(self) -> int:
        """report_driver_status passes run so far."""
        return self.ctx.runner.records[REPORT].passes

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        async with self.http.request(method, path, json=body) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json() if resp.content_length != 0 else None

    async def spec(self, flavor: str) -> RequestSpec:
        async with self.ctx.sessionmaker() as session:
            return RequestSpec(await get_flavor(session, flavor))

    def caps(self, node_id: int) -> dict[str, Any]:
        """The capabilities the scheduler holds for the node ({} when it does not know it)."""
        nodename = str(node_id)
        return dict(self.scheduler.selector.get(nodename).capabilities) if nodename in self.scheduler.selector else {}


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (or fail at the deadline)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls what the services' tasks change
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(tmp: Path, db_url: str | None = None, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    """``serve`` in a task until the block ends; yields once its start-up passes have run."""
    settings = make_settings(
        tmp,
        db_url,
        **{**sections, "tasks": {"host_state_interval": HOUR, "jitter": 0.0, **sections.pop("tasks", {})}},
    )
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[AppContext, Endpoint]] = asyncio.get_running_loop().create_future()
    service = asyncio.create_task(serve(settings, stop, on_ready=lambda ctx, end: ready.set_result((ctx, end))))
    try:
        async with asyncio.timeout(60):
            await asyncio.wait([ready, service], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            service.result()  # why it stopped
        ctx, endpoint = ready.result()
        headers = {"Authorization": f"Bearer {ctx.api_token}"}
        async with aiohttp.ClientSession(base_url=endpoint.url, headers=headers) as http:
            svc = Running(ctx, http)
            await until(lambda: svc.reports >= START_PASSES)
            yield svc
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await service


GPU_FLAVOR = {"name": "gpu", "ram": 16384, "vcpus": 8, "disk": 200, "extra_specs": {"capabilities:gpu": "a100"}}
PLAIN_FLAVOR = {"name": "plain", "ram": 16384, "vcpus": 8, "disk": 200}


async def test_a_node_enrolled_and_patched_through_the_api_is_scheduled_on_before_any_pass(
    tmp_path: Path, db_file: Path
) -> None:
    async with running(tmp_path) as svc:
        await svc.call("POST", "/v1/flavors", GPU_FLAVOR, status=201)
        await svc.call("POST", "/v1/flavors", PLAIN_FLAVOR, status=201)
        gpu, plain = await svc.spec("gpu"), await svc.spec("plain")
        node = (await svc.call("POST", "/v1/nodes", node_body(1), status=201))["id"]

        await until(lambda: svc.scheduler.select_destinations(plain).ok)  # enrolled: its event brought it
        assert not svc.scheduler.select_destinations(gpu).ok

        await svc.call("PATCH", f"/v1/nodes/{node}", {"extra_specs": {"gpu": "a100"}})
        await until(lambda: svc.caps(node).get("gpu") == "a100")  # the follower, not a selection, took it in
        assert [c.nodename for c in svc.scheduler.select_destinations(gpu).chosen] == [str(node)]

        await svc.call("PATCH", f"/v1/nodes/{node}", {"cpus": 4})  # now too small for both flavors
        await until(lambda: svc.caps(node).get("vcpus") == 4)
        assert not svc.scheduler.select_destinations(plain).ok
        await svc.call("PUT", f"/v1/nodes/{node}/capabilities/gpu", {"value": "h100"})
        await until(lambda: svc.caps(node).get("gpu") == "h100")

        assert svc.reports == START_PASSES
        assert svc.scheduler.capability_reads >= 4


async def test_writes_that_leave_the_capabilities_alone_read_nothing(tmp_path: Path, db_file: Path) -> None:
    """Power, maintenance and a storm of claims change nodes' views, not their capability fingerprints: no
    read. A capability change afterwards is the one read (the follower reads in order)."""
    async with running(tmp_path) as svc:
        await svc.call("POST", "/v1/flavors", PLAIN_FLAVOR, status=201)
        plain = await svc.spec("plain")
        inventory = {"nodes": [node_body(i) for i in range(1, 21)]}
        ids = [n["id"] for n in (await svc.call("POST", "/v1/nodes/import", inventory, status=201))["nodes"]]
        await until(lambda: all(str(i) in svc.scheduler.selector for i in ids))
        reads, read = svc.scheduler.capability_reads, svc.scheduler.capabilities_read
        events = svc.ctx.bus.published["nodes"]

        await svc.call("PUT", f"/v1/nodes/{ids[0]}/states/power", {"target": "power on"})
        await svc.call("PUT", f"/v1/nodes/{ids[0]}/maintenance", {"reason": "disk"})
        await svc.call("DELETE", f"/v1/nodes/{ids[0]}/maintenance")
        placed = await asyncio.gather(*(svc.scheduler.claim(plain, lambda _: []) for _ in range(len(ids))))
        assert sorted(p.node_id for batch in placed for p in batch) == ids
        await svc.call("PATCH", f"/v1/nodes/{ids[-1]}", {"extra_specs": {"rack": "r7"}})
        await until(lambda: svc.caps(ids[-1]).get("rack") == "r7")

        assert svc.ctx.bus.published["nodes"] - events >= 5  # each write was an event
        assert (svc.scheduler.capability_reads, svc.scheduler.capabilities_read) == (reads + 1, read + 1)
        assert svc.reports == START_PASSES


@pytest.fixture
async def own_postgres(postgres_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of its own on the test PostgreSQL server, dropped afterwards: the served
    services' loops write rows (compute_nodes, services) that the session's shared database must not keep."""
    url = make_url(postgres_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    name = f"{url.database}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        own = url.set(database=name).render_as_string(hide_password=False)
        engine = make_engine(make_settings(tmp_path, db_url=own).database)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        yield own
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.mark.postgres
async def test_capability_changes_at_one_service_reach_the_other_services_scheduler(
    tmp_path: Path, own_postgres: str
) -> None:
    """Two services on one PostgreSQL, the postgresql bus, ring ownership (every scheduler sees every
    node): a node enrolled at A, then patched at A, is scheduled on by B without B publishing anything."""
    shared = {"bus": {"backend": "postgresql"}, "secrets": {"key_file": str(tmp_path / "secret.key")}}
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                running(tmp_path / host, own_postgres, service={"host": host, "ownership": "ring"}, **shared)
            )
            for host in ("svc-a", "svc-b")
        ]
        await a.call("POST", "/v1/flavors", GPU_FLAVOR, status=201)
        await a.call("POST", "/v1/flavors", PLAIN_FLAVOR, status=201)
        gpu, plain = await b.spec("gpu"), await b.spec("plain")
        node = (await a.call("POST", "/v1/nodes", node_body(1), status=201))["id"]

        await until(lambda: b.scheduler.select_destinations(plain).ok)
        assert not b.scheduler.select_destinations(gpu).ok

        started = time.perf_counter()
        await a.call("PATCH", f"/v1/nodes/{node}", {"extra_specs": {"gpu": "a100"}})
        await until(lambda: b.caps(node).get("gpu") == "a100")
        took = time.perf_counter() - started
        print(f"capabilities: PATCH at svc-a to svc-b's selector in {took * 1000:.0f} ms")
        assert [c.nodename for c in b.scheduler.select_destinations(gpu).chosen] == [str(node)]
        # the ring's owner of the node, as bm_nodes says it, is what B's scheduler holds (ownership moves
        # arrive as events too)
        owner = (await a.call("GET", f"/v1/nodes/{node}"))["service_host"]
        await until(lambda: b.caps(node).get("host") == owner)
        assert (a.reports, b.reports) == (START_PASSES, START_PASSES)


@asynccontextmanager
async def following(ctx: AppContext) -> AsyncIterator[BareMetalNode]:
    """The scheduler's follower running, and a node written with its event, taken in by the follower."""
    follower = asyncio.create_task(ctx.scheduler.follow_nodes())
    try:
        async with ctx.sessionmaker.begin() as session:
            node = BareMetalNode(uuid=str(uuid.uuid4()), service_host="test-host", cpus=8, memory_mb=4096, local_gb=100)
            session.add(node)
            await session.flush()
            await note_nodes(session, [node.id])
        await until(lambda: str(node.id) in ctx.scheduler.selector)
        yield node
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_a_node_whose_capabilities_cannot_be_built_leaves_the_scheduler_until_fixed(ctx: AppContext) -> None:
    """A row no API would write (per-node extra specs that are not an object): the follower rejects the
    node as the capability loop does — counted each time, logged when it starts, not offered — and takes it
    back once fixed."""
    scheduler = ctx.scheduler
    async with following(ctx) as node:
        nodename = str(node.id)

        with capture_logs() as logs:
            for rejections, specs in enumerate(([1], ["still", "a", "list"]), start=1):
                async with ctx.sessionmaker.begin() as session:
                    stmt = update(BareMetalNode).where(BareMetalNode.id == node.id).values(extra_specs=specs)
                    await session.execute(stmt)
                    await note_nodes(session, [node.id])
                await until(lambda n=rejections: scheduler.failures.totals.get("scheduler_capabilities") == n)
                assert nodename not in scheduler.selector
            async with ctx.sessionmaker.begin() as session:
                await session.execute(
                    update(BareMetalNode).where(BareMetalNode.id == node.id).values(extra_specs={"rack": "r1"})
                )
                await note_nodes(session, [node.id])
            await until(lambda: nodename in scheduler.selector)
        assert scheduler.selector.get(nodename).capabilities["rack"] == "r1"
        events = [e["event"] for e in logs if e.get("node") == nodename]
        assert events == ["node_capabilities_rejected", "node_capabilities_recovered"]  # logged when it starts


async def test_without_the_fleet_view_a_node_moved_to_another_service_leaves_the_scheduler(ctx: AppContext) -> None:
    """Static ownership: a scheduler offers only its own service's nodes (get_host_stats's scope), so a node
    whose service_host moves away leaves it — as the next publication would drop it — and comes back with
    its owner."""
    scheduler = ctx.scheduler
    assert not ctx.driver.fleet_view
    async with following(ctx) as node:
        nodename = str(node.id)
        for owner, known in (("elsewhere", False), ("test-host", True)):
            async with ctx.sessionmaker.begin() as session:
                stmt = update(BareMetalNode).where(BareMetalNode.id == node.id).values(service_host=owner)
                await session.execute(stmt)
                await note_nodes(session, [node.id])
            await until(lambda k=known: (nodename in scheduler.selector) == k)
        assert scheduler.selector.get(nodename).host == "test-host"
