"""Work goes to the owner (bmd.api.forward): two services on one database with ring ownership, each with
its real API on 127.0.0.1. A hardware action sent to the service that does not own the node is carried out
by the owner, with the forwarding service's own service token; never twice, never to a dead owner."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.api.forward import FORWARDED_BY, FORWARDER
from bmd.config import DatabaseSettings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import ApiToken, BareMetalNode, Service, utcnow
from bmd.db.tokens import create_token
from bmd.service import open_context
from tests.cloud import make_cloud
from tests.conftest import make_settings, node_body


@contextlib.asynccontextmanager
async def service(tmp: Path, host: str, db_url: str) -> AsyncIterator[tuple[AppContext, TestClient[Any, Any]]]:
    # every service of one database shares its secrets' key: any of them decrypts a node's BMC password
    secrets = {"key_file": str(tmp / "secret.key")}
    settings = make_settings(tmp / host, db_url, service={"host": host, "ownership": "ring"}, secrets=secrets)
    async with open_context(settings) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            async with ctx.sessionmaker.begin() as session:  # where the others reach its API
                url = str(client.make_url("/")).rstrip("/")
                await session.execute(update(Service).where(Service.host == host).values(api_url=url))
            yield ctx, client


def auth(ctx: AppContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.api_token}"}


async def owner_of(ctx: AppContext, node_id: int) -> str:
    async with ctx.sessionmaker() as session:
        stmt = select(BareMetalNode.service_host).where(BareMetalNode.id == node_id)
        return str((await session.execute(stmt)).scalar_one())


async def power_of(ctx: AppContext, node_id: int) -> str | None:
    async with ctx.sessionmaker() as session:
        return (await session.execute(select(BareMetalNode.power_state).where(BareMetalNode.id == node_id))).scalar()


async def test_a_power_action_at_the_other_service_is_carried_out_by_the_owner(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite'}"
    (tmp_path / "svc-a").mkdir()
    (tmp_path / "svc-b").mkdir()
    from bmd.config import DatabaseSettings
    from bmd.db.engine import make_engine
    from bmd.db.migrate import upgrade

    engine = make_engine(DatabaseSettings(url=db_url))
    await upgrade(engine)
    await engine.dispose()
    async with service(tmp_path, "svc-a", db_url) as (a, client_a), service(tmp_path, "svc-b", db_url) as (b, client_b):
        for i in range(1, 9):
            resp = await client_a.post("/v1/nodes", json=node_body(i, uuid=str(uuid.UUID(int=i))), headers=auth(a))
            assert resp.status == 201, await resp.text()
        await a.runner.run_pass("node_ownership")
        owners = {i: await owner_of(a, i) for i in range(1, 9)}
        assert set(owners.values()) == {"svc-a", "svc-b"}, owners
        on_b = next(i for i, h in owners.items() if h == "svc-b")

        with capture_logs() as logs:
            resp = await client_a.put(f"/v1/nodes/{on_b}/states/power", json={"target": "power on"}, headers=auth(a))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["power_state"] == "power on"
        assert await power_of(a, on_b) == "power on"
        forwarded = [e for e in logs if e["event"] == "request_forwarded"]
        assert forwarded and forwarded[0]["owner"] == "svc-b" and forwarded[0]["status"] == 200
        audits = [e for e in logs if e["event"] == "audit" and e.get("caller", "").startswith("service@svc-a.")]
        assert audits, "the owner's audit names the forwarding service's token"

        # the owner acted with svc-a's service token: a live row of role service, one per service start
        async with a.sessionmaker() as session:
            rows = (await session.execute(select(ApiToken).where(ApiToken.role == "service"))).scalars().all()
        assert sorted(r.name.split(".")[0] for r in rows if r.revoked_at is None) == ["service@svc-a", "service@svc-b"]

        # a request that was already forwarded once and reaches a non-owner is refused, not sent on
        token = client_a.app[FORWARDER].token
        resp = await client_a.put(
            f"/v1/nodes/{on_b}/states/power",
            json={"target": "power off"},
            headers={"Authorization": f"Bearer {token}", FORWARDED_BY: "svc-c"},
        )
        assert resp.status == 409 and "svc-b" in (await resp.json())["message"]
        assert await power_of(a, on_b) == "power on"

        # an operator may not call the services' internal route
        async with b.sessionmaker.begin() as session:
            _row, operator = await create_token(session, "alice", "operator")
        spawn = {"instance_uuid": str(uuid.uuid4())}
        headers = {"Authorization": f"Bearer {operator}"}
        resp = await client_b.post(f"/v1/nodes/{on_b}/spawn", json=spawn, headers=headers)
        assert resp.status == 403 and "role service" in (await resp.json())["message"]

        # the owner goes silent: nothing is sent to it, the caller learns why
        async with a.sessionmaker.begin() as session:
            stale = utcnow() - dt.timedelta(seconds=a.settings.service.service_down_time + 5)
            await session.execute(update(Service).where(Service.host == "svc-b").values(last_heartbeat=stale))
        resp = await client_a.put(f"/v1/nodes/{on_b}/states/power", json={"target": "power off"}, headers=auth(a))
        assert resp.status == 503
        body = await resp.json()
        assert body["error"] == "owner_unavailable" and "svc-b" in body["message"]
        assert await power_of(a, on_b) == "power on"
        # one ownership pass later svc-a owns it and acts itself
        await a.runner.run_pass("node_ownership")
        assert await owner_of(a, on_b) == "svc-a"
        resp = await client_a.put(f"/v1/nodes/{on_b}/states/power", json={"target": "power off"}, headers=auth(a))
        assert resp.status == 200 and await power_of(a, on_b) == "power off"


@pytest.mark.parametrize("ownership", ["static"])
async def test_static_ownership_forwards_nothing(tmp_path: Path, db_file: Path, ownership: str) -> None:
    settings = make_settings(tmp_path, service={"ownership": ownership})
    async with open_context(settings) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            assert client.app.get(FORWARDER) is None


async def test_an_instance_claimed_at_one_service_is_deployed_by_the_owner_of_its_node(tmp_path: Path) -> None:
    """Every scheduler sees every node (the capability view covers the fleet under ring ownership); the
    service whose API took the request claims the node, and the node's owner runs the deploy."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite'}"
    engine = make_engine(DatabaseSettings(url=db_url))
    await upgrade(engine)
    await engine.dispose()
    shared = {
        "database": {"url": db_url},
        "secrets": {"key_file": str(tmp_path / "secret.key")},
        "driver": {"default_power_driver": "fake"},
    }
    for host in ("svc-a", "svc-b"):
        (tmp_path / host).mkdir()
    async with (
        make_cloud(tmp_path / "svc-a", service={"host": "svc-a", "ownership": "ring"}, **shared) as a,
        make_cloud(
            tmp_path / "svc-b",
            flavor=False,
            service={"host": "svc-b", "ownership": "ring"},
            # one image store: A's images (the request's) and B's own boot files
            deploy={"allowed_image_roots": [str(tmp_path / h / "images-src") for h in ("svc-a", "svc-b")]},
            **shared,
        ) as b,
    ):
        for cloud in (a, b):
            async with cloud.ctx.sessionmaker.begin() as session:
                url = str(cloud.client.make_url("/")).rstrip("/")
                stmt = update(Service).where(Service.host == cloud.ctx.settings.service.host).values(api_url=url)
                await session.execute(stmt)
        await a.enroll(6)
        await a.add_pxe_ips(6)
        await a.ctx.runner.run_pass("node_ownership")
        await a.publish()
        owners = {i: await owner_of(a.ctx, i) for i in range(1, 7)}
        assert set(owners.values()) == {"svc-a", "svc-b"}, owners
        # A's scheduler knows all six, each under its owner
        assert {s.nodename: s.host for s in a.ctx.scheduler.selector.hosts()} == {str(i): h for i, h in owners.items()}

        placed: dict[int, str] = {}
        for _ in range(6):
            status, body = await a.create(networks=[{"id": "n1"}])
            assert status == 202, body
            placed[body["instances"][0]["bm_node_id"]] = body["instances"][0]["uuid"]
        assert sorted(placed) == [1, 2, 3, 4, 5, 6]  # no node twice
        await a.settle()
        await b.settle()
        for node_id in placed:
            node = await a.node(node_id)
            assert node.provision_state == "wait_callback", (node_id, node.provision_state, node.last_error)
            own, other = (a, b) if owners[node_id] == "svc-a" else (b, a)
            # powered on for its PXE boot by its owner's driver; the other service never touched its BMC
            assert any(c.startswith("set_power_state") for c in own.fake.bmc(node_id).calls), own.fake.bmc(node_id)
            assert other.fake.bmc(node_id).calls == []
