"""Three ``bmd serve`` processes on one PostgreSQL database (ring ownership, the PostgreSQL bus): 300
concurrent instance requests spread over the three APIs against 100 nodes give exactly 100 instances, no
node twice; SIGKILL one service — the survivors own its nodes within its down time plus a pass, its
deploys are kept (waiting for their agent under the new owner) or failed with a reason, nothing is lost;
restart it — about a third of the nodes come back to it."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Instance
from bmd.lab.cluster import ServiceProcess, cluster_config, fake_nodes, placeholder_images

pytestmark = pytest.mark.postgres

NODES = 100
DOWN = 3.0  # service_down_time: a killed service's nodes move within this plus one ownership pass


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A database of its own: the run's shared one holds other tests' live services."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = f"{url.database}_scaleout"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    db_url = url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await upgrade(engine)
        yield db_url, engine
    finally:
        await engine.dispose()
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


class Service:
    def __init__(self, config: Path) -> None:
        self.daemon = ServiceProcess(config)
        self.url = self.daemon.started()
        self.auth = {"Authorization": f"Bearer {self.daemon.token()}"}


async def until(what: str, probe: Any, deadline: float) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < end, f"{what}: not within {deadline} s"
        await asyncio.sleep(0.1)  # polling a database other processes write: a deadline, not a wait


async def owners(engine: AsyncEngine) -> collections.Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(BareMetalNode.service_host, func.count()).group_by(BareMetalNode.service_host))
        return collections.Counter({host: n for host, n in rows})


async def test_three_services_one_database_no_double_booking_and_takeover(
    tmp_path: Path, database: tuple[str, AsyncEngine]
) -> None:
    db_url, engine = database
    images = placeholder_images(tmp_path / "images")
    hosts = ["svc-1", "svc-2", "svc-3"]
    configs = {h: cluster_config(tmp_path, h, db_url, images, down_time=DOWN) for h in hosts}
    services = {h: Service(configs[h]) for h in hosts}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            first = services["svc-1"]
            nodes = fake_nodes(NODES)
            async with http.post(f"{first.url}/v1/nodes/import", json={"nodes": nodes}, headers=first.auth) as r:
                assert r.status == 201, await r.text()
            flavor = {"name": "bm", "ram": 16384, "vcpus": 8, "disk": 200}
            async with http.post(f"{first.url}/v1/flavors", json=flavor, headers=first.auth) as r:
                assert r.status == 201, await r.text()
            for i in range(NODES):
                body = {"address": f"10.9.0.{i + 10}", "server_address": f"10.8.0.{i + 10}"}
                async with http.post(f"{first.url}/v1/pxe_ips", json=body, headers=first.auth) as r:
                    assert r.status == 201, await r.text()

            async def spread() -> bool:
                counts = await owners(engine)
                return set(counts) == set(hosts) and min(counts.values()) >= NODES * 0.2

            await until("the ring spreads the nodes over the three services", spread, 30)

            async def sees_all(svc: Service) -> bool:
                body = {"flavor": "bm", "num_instances": NODES}
                async with http.post(f"{svc.url}/v1/schedule", json=body, headers=svc.auth) as r:
                    return r.status == 200

            for svc in services.values():  # every scheduler sees every node
                await until(f"{svc.url} schedules on all {NODES} nodes", lambda svc=svc: sees_all(svc), 30)

            request = {"flavor": "bm", "image_ref": str(images / "disk.img"), "networks": [{"id": "n1"}]}
            order = [services[hosts[i % 3]] for i in range(3 * NODES)]

            async def create(svc: Service) -> tuple[int, dict[str, Any]]:
                async with http.post(f"{svc.url}/v1/instances", json=request, headers=svc.auth) as r:
                    return r.status, json.loads(await r.text())

            results = await asyncio.gather(*(create(svc) for svc in order))
            statuses = collections.Counter(s for s, _ in results)
            assert statuses[202] == NODES and statuses[202] + statuses[409] == 3 * NODES, statuses
            placed = [b["instances"][0]["bm_node_id"] for s, b in results if s == 202]
            assert len(set(placed)) == NODES  # no node twice
            async with engine.connect() as conn:
                inst = await conn.scalar(
                    select(func.count()).select_from(Instance).where(Instance.deleted_at.is_(None))
                )
                held = await conn.scalar(
                    select(func.count(func.distinct(BareMetalNode.instance_uuid))).where(
                        BareMetalNode.instance_uuid.is_not(None)
                    )
                )
            assert inst == held == NODES

            before = await owners(engine)
            services["svc-3"].daemon.proc.kill()  # SIGKILL: no goodbye
            killed_at = time.monotonic()

            async def gone() -> bool:
                return "svc-3" not in await owners(engine)

            await until("the survivors own svc-3's nodes", gone, DOWN + 10)
            takeover = time.monotonic() - killed_at
            after = await owners(engine)
            assert sum(after.values()) == NODES and set(after) == {"svc-1", "svc-2"}
            assert after["svc-1"] > before["svc-1"] and after["svc-2"] > before["svc-2"]

            # Nothing lost: every instance is still on its node, deploying or waiting for its agent (kept by
            # the new owner), or failed with its reason (a spawn svc-3 was running when it died: the new owner's
            # takeover recovery fails it and frees the node).
            async def settled() -> list[Any]:
                async with engine.connect() as conn:
                    stmt = select(
                        Instance.uuid, Instance.vm_state, Instance.last_error, BareMetalNode.provision_state
                    ).outerjoin(BareMetalNode, BareMetalNode.instance_uuid == Instance.uuid)
                    rows = (await conn.execute(stmt)).all()
                kept = [r for r in rows if r.provision_state in ("deploying", "wait_callback")]
                failed = [r for r in rows if r.provision_state is None and r.vm_state == "error" and r.last_error]
                return rows if len(rows) == NODES and len(kept) + len(failed) == NODES else []

            rows = await until("every instance kept or failed with a reason", settled, 30)
            failed = [r for r in rows if r.provision_state is None]
            assert all("interrupted" in r.last_error for r in failed), failed[:3]

            services["svc-3"] = Service(configs["svc-3"])

            async def back() -> bool:
                counts = await owners(engine)
                return NODES * 0.2 <= counts.get("svc-3", 0) <= NODES * 0.5

            await until("about a third of the nodes return to svc-3", back, 30)
            print(f"takeover after SIGKILL: {takeover:.1f} s (down time {DOWN} s)")
    finally:
        for svc in services.values():
            svc.daemon.stop()
