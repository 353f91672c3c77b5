"""Per-node reservations (bmd.db.reservations): the hardware lock between services, taken by every
conductor job under ring ownership. On a real SQLite file, and on PostgreSQL when BMD_TEST_POSTGRES_URL is
set; the services' liveness is their heartbeat rows, aged by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update

from bmd.api.app import create_app
from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Service, utcnow
from bmd.db.reservations import NodeReserved, release, reserve
from bmd.service import open_context
from tests.conftest import make_settings, node_body
from tests.test_boot_device import until

DOWN = 60.0


async def _age(ctx, host: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    async with ctx.sessionmaker.begin() as session:
        stamp = utcnow() - dt.timedelta(seconds=seconds)
        await session.execute(update(Service).where(Service.host == host).values(last_heartbeat=stamp))


async def _holder(ctx, node_id: int) -> str | None:  # type: ignore[no-untyped-def]
    async with ctx.sessionmaker() as session:
        return await session.scalar(select(BareMetalNode.reservation).where(BareMetalNode.id == node_id))


async def test_one_live_holder_and_a_dead_ones_lock_breaks_only_after_its_down_time(
    tmp_path: Path, db_url: str
) -> None:
    settings = make_settings(
        tmp_path, db_url, service={"host": "svc-a", "ownership": "ring", "service_down_time": DOWN}
    )
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await upgrade(engine)  # a no-op where migrated already
    finally:
        await engine.dispose()
    async with open_context(settings) as ctx:
        async with ctx.sessionmaker.begin() as session:
            node = BareMetalNode(uuid=str(uuid.uuid4()), service_host="svc-a", cpus=1, memory_mb=1, local_gb=1)
            session.add(node)
            session.add(Service(host="svc-b-res", last_heartbeat=utcnow()))
        async with ctx.sessionmaker.begin() as session:
            await reserve(session, node.id, "svc-b-res", DOWN)
        with pytest.raises(NodeReserved, match="reserved by service svc-b-res"):
            async with ctx.sessionmaker.begin() as session:
                await reserve(session, node.id, "svc-a", DOWN)
        async with ctx.sessionmaker.begin() as session:  # only the holder releases
            await release(session, node.id, "svc-a")
        assert await _holder(ctx, node.id) == "svc-b-res"
        async with ctx.sessionmaker.begin() as session:  # the holder may take it again
            await reserve(session, node.id, "svc-b-res", DOWN)

        await _age(ctx, "svc-b-res", DOWN - 5)  # silent, but not yet past its down time: still held
        with pytest.raises(NodeReserved):
            async with ctx.sessionmaker.begin() as session:
                await reserve(session, node.id, "svc-a", DOWN)
        await _age(ctx, "svc-b-res", DOWN + 5)  # down: its reservation is broken
        async with ctx.sessionmaker.begin() as session:
            await reserve(session, node.id, "svc-a", DOWN)
        assert await _holder(ctx, node.id) == "svc-a"
        async with ctx.sessionmaker.begin() as session:
            await release(session, node.id, "svc-a")
        assert await _holder(ctx, node.id) is None
        async with ctx.sessionmaker.begin() as session:  # a test database shared by the run: tidy up
            await session.delete(await session.get(BareMetalNode, node.id))
            await session.execute(Service.__table__.delete().where(Service.host == "svc-b-res"))


async def test_every_hardware_action_holds_the_reservation(tmp_path: Path, db_file: Path) -> None:
    """A power action on a node another live service holds: 409 naming it, the BMC untouched; once that
    service is down the action runs, holding the reservation while it runs and releasing it after."""
    settings = make_settings(tmp_path, service={"host": "svc-a", "ownership": "ring", "service_down_time": DOWN})
    async with open_context(settings) as ctx:
        auth = {"Authorization": f"Bearer {ctx.api_token}"}
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            node = await (await client.post("/v1/nodes", json=node_body(1), headers=auth)).json()
            async with ctx.sessionmaker.begin() as session:
                session.add(Service(host="svc-x", last_heartbeat=utcnow()))
                await reserve(session, node["id"], "svc-x", DOWN)
            fake = ctx.power.get("fake")
            resp = await client.put(f"/v1/nodes/{node['id']}/states/power", json={"target": "power on"}, headers=auth)
            assert resp.status == 409
            body = await resp.json()
            assert body["error"] == "node_reserved" and "svc-x" in body["message"]
            assert fake.bmc(node["id"]).calls == []  # type: ignore[attr-defined]

            await _age(ctx, "svc-x", DOWN + 5)
            seen: list[str | None] = []
            gate = fake.bmc(node["id"]).gate = asyncio.Event()  # type: ignore[attr-defined]
            put = client.put(f"/v1/nodes/{node['id']}/states/power", json={"target": "power on"}, headers=auth)
            task = asyncio.ensure_future(put)
            await until("the BMC call is in flight", lambda: fake.bmc(node["id"]).in_flight > 0)  # type: ignore[attr-defined]
            seen.append(await _holder(ctx, node["id"]))  # held while the BMC call runs
            gate.set()
            resp = await task
            assert resp.status == 200, await resp.text()
            assert seen == ["svc-a"] and await _holder(ctx, node["id"]) is None
