"""Work goes to the owner (bmd.api.forward): two services on one database with ring ownership, each with
its real API on 127.0.0.1. A hardware action sent to the service that does not own the node is carried out
by the owner, with the forwarding service's own service token; never twice, never to a dead owner."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.api.forward import FORWARDED_BY, FORWARDED_FOR, FORWARDER
from bmd.config import DatabaseSettings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import ApiToken, BareMetalNode, Deployment, Service, utcnow
from bmd.db.tokens import create_token
from bmd.drivers.deploy.agent_sim import Lookup, download_image, lookup, read_boot_args
from bmd.drivers.deploy.checksum import DigestSink, parse_checksum
from bmd.lab import Lab, LabSpec
from bmd.provision.agent import TOKEN_HEADER
from bmd.service import open_context
from tests.cloud import Cloud, make_cloud
from tests.conftest import make_settings, node_body
from tests.ipmi.helpers import eventually
from tests.test_console_ws import Peer


@contextlib.asynccontextmanager
async def service(
    tmp: Path, host: str, db_url: str, **sections: dict[str, Any]
) -> AsyncIterator[tuple[AppContext, TestClient[Any, Any]]]:
    # every service of one database shares its secrets' key: any of them decrypts a node's BMC password
    secrets = {"key_file": str(tmp / "secret.key")}
    settings = make_settings(
        tmp / host, db_url, service={"host": host, "ownership": "ring"}, secrets=secrets, **sections
    )
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


@contextlib.asynccontextmanager
async def two_clouds(tmp_path: Path) -> AsyncIterator[tuple[Cloud, Cloud]]:
    """Services svc-a and svc-b on one database (ring ownership, fake BMCs), each with its lab cloud."""
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
        yield a, b


async def spread(a: Cloud, count: int) -> dict[int, str]:
    """``count`` nodes enrolled at A with PXE IPs, spread by A's ring: node id -> owner."""
    await a.enroll(count)
    await a.add_pxe_ips(count)
    await a.ctx.runner.run_pass("node_ownership")
    await a.publish()
    return {i: await owner_of(a.ctx, i) for i in range(1, count + 1)}


async def test_an_instance_claimed_at_one_service_is_deployed_by_the_owner_of_its_node(tmp_path: Path) -> None:
    """Every scheduler sees every node (the capability view covers the fleet under ring ownership); the
    service whose API took the request claims the node, and the node's owner runs the deploy."""
    async with two_clouds(tmp_path) as (a, b):
        owners = await spread(a, 6)
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


def mac_of(node_id: int) -> str:
    """The MAC Cloud.enroll gives a node's first interface."""
    return f"52:54:00:{node_id // 256:02x}:{node_id % 256:02x}:00"


async def deployment_of(cloud: Cloud, node_id: int) -> Deployment:
    async with cloud.ctx.sessionmaker() as session:
        dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node_id))
    assert dep is not None
    return dep


async def fetch_image(agent: aiohttp.ClientSession, answer: Lookup, url: str) -> None:
    """The agent's download of its image from ``url``, cut half-way and resumed with a Range request."""
    sink = DigestSink(parse_checksum(answer.image_checksum, field="image_checksum"))
    assert await download_image(agent, url, sink, None, 0.5, {TOKEN_HEADER: answer.token})  # resumed: a 206
    sink.verify(url)


def answer_urls(answer: Lookup) -> tuple[str, str]:
    return answer.heartbeat_url, answer.callback_url


async def report(agent: aiohttp.ClientSession, answer: Lookup, heartbeat_url: str, callback_url: str) -> None:
    """The agent's heartbeat and its callback: the image is written."""
    auth = {TOKEN_HEADER: answer.token}
    async with agent.post(heartbeat_url, json={"message": "image written"}, headers=auth) as resp:
        assert resp.status == 202, await resp.text()
    body = {"deployment_id": answer.deployment_id, "address": "127.0.0.77", "error": None}
    async with agent.post(callback_url, json=body, headers=auth) as resp:
        assert resp.status == 202, await resp.text()


async def test_the_agent_may_reach_any_service_and_a_taken_over_deploy_completes(tmp_path: Path) -> None:
    """The agent's calls reach the node's owner whichever service they arrive at (an image streamed through,
    resumed with Range; the agent's own address, not the forwarder's, is what the owner records); a deploy
    whose owner dies while its agent writes the disk completes on the survivor when the agent calls back
    there; one whose agent had not looked up yet (its boot files on the dead service) fails with the reason."""
    async with two_clouds(tmp_path) as (a, b):
        owners = await spread(a, 6)
        on_a = [i for i, h in owners.items() if h == "svc-a"]
        on_b = [i for i, h in owners.items() if h == "svc-b"]
        assert len(on_a) >= 2 and on_b, owners
        for _ in range(6):
            status, body = await a.create()
            assert status == 202, body
        await a.settle()
        await b.settle()
        url_a, url_b = (str(c.client.make_url("")).rstrip("/") for c in (a, b))
        timeout = aiohttp.ClientTimeout(total=30)

        # B's node, its agent talking to A only: every call is carried out by B
        node = on_b[0]
        boot = dataclasses.replace(read_boot_args(b.tftp_root, mac_of(node)), bmd_url=url_a)
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.77", 0))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as agent:
            with capture_logs() as logs:
                status, text, answer = await lookup(agent, boot, mac_of(node))
                assert status == 200 and answer is not None, text
                await fetch_image(agent, answer, answer.image_url.replace(url_b, url_a))
                await report(
                    agent, answer, *(u.replace(url_b, url_a) for u in (answer.heartbeat_url, answer.callback_url))
                )
        paths = [e["path"] for e in logs if e["event"] == "request_forwarded" and e["owner"] == "svc-b"]
        assert paths[0] == "/v1/agent/lookup" and len(paths) == 5, paths  # lookup, image twice, heartbeat, callback
        assert (await deployment_of(b, node)).agent_address == "127.0.0.77"  # the agent's, not svc-a's
        await b.settle()
        assert (await b.node(node)).provision_state == "active"
        assert any("boot_device" in c or "disk" in c for c in b.fake.bmc(node).calls), b.fake.bmc(node).calls
        assert a.fake.bmc(node).calls == []

        # only a bmd service may say whose address a request came from (the owner refuses anyone else)
        forged = {"node_uuid": str((await a.node(on_a[0])).uuid), "mac": mac_of(on_a[0])}
        resp = await a.client.post("/v1/agent/lookup", json=forged, headers={FORWARDED_FOR: "10.9.0.10", **a.auth})
        assert resp.status == 403 and FORWARDED_FOR in (await resp.json())["message"]

        # A's node x: its agent looked up and fetched its image from A; y's agent never looked up
        x, y = on_a[0], on_a[1]
        await b.ctx.runner.run_pass("adopt_nodes")  # B's first adoption pass: what it owns before A dies
        async with aiohttp.ClientSession(timeout=timeout) as agent:
            status, text, answer = await lookup(agent, read_boot_args(a.tftp_root, mac_of(x)), mac_of(x))
            assert status == 200 and answer is not None, text
            await fetch_image(agent, answer, answer.image_url)
            # A dies; one ownership pass later B owns its nodes, and adopts them
            async with b.ctx.sessionmaker.begin() as session:
                stale = utcnow() - dt.timedelta(seconds=b.ctx.settings.service.service_down_time + 5)
                await session.execute(update(Service).where(Service.host == "svc-a").values(last_heartbeat=stale))
            await b.ctx.runner.run_pass("node_ownership")
            assert {await owner_of(b.ctx, i) for i in range(1, 7)} == {"svc-b"}
            await b.ctx.runner.run_pass("adopt_nodes")
            await b.settle()
            # y would boot files only A had: failed at once with the reason, as a deploy its agent failed
            lost = await b.node(y)
            assert lost.provision_state == "error", lost.provision_state
            assert "before its agent looked up" in (lost.last_error or ""), lost.last_error
            assert (await b.instance(lost.instance_uuid or "")).vm_state == "error"
            # x's agent goes on: it reaches B, which finishes the deploy with none of A's files
            assert (await b.node(x)).provision_state == "wait_callback"
            with capture_logs() as logs:
                await report(
                    agent, answer, *(u.replace(url_a, url_b) for u in (answer.heartbeat_url, answer.callback_url))
                )
                await b.settle()
        done = await b.node(x)
        assert done.provision_state == "active", (done.provision_state, done.last_error)
        assert any(e["event"] == "pxe_switch_skipped" for e in logs), [e["event"] for e in logs]
        assert any("boot_device" in c or "disk" in c for c in b.fake.bmc(x).calls), b.fake.bmc(x).calls


async def test_the_console_of_a_node_is_relayed_from_its_owner(tmp_path: Path) -> None:
    """The serial console (IPMI SOL of a lab BMC) lives on the node's owner: attached at the other service,
    the websocket is relayed frame by frame both ways, and the console log is read from the owner; the
    operator's token is checked first, where the request arrived."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite'}"
    engine = make_engine(DatabaseSettings(url=db_url))
    await upgrade(engine)
    await engine.dispose()
    fast = {"ipmi": {"timeout": 2.0, "retries": 2, "min_command_interval": 0.0}}
    async with (
        Lab(LabSpec(count=4)) as lab,
        service(tmp_path, "svc-a", db_url, **fast) as (a, client_a),
        service(tmp_path, "svc-b", db_url, **fast),  # the owner of some of them
    ):
        # fixed uuids: where the ring puts the nodes is the same every run
        inventory = [
            {**n, "pm_driver": "ipmi", "uuid": str(uuid.UUID(int=i))} for i, n in enumerate(lab.inventory(), 1)
        ]
        resp = await client_a.post("/v1/nodes/import", json={"nodes": inventory}, headers=auth(a))
        assert resp.status == 201, await resp.text()
        await a.runner.run_pass("node_ownership")
        async with a.sessionmaker() as session:
            rows = (await session.execute(select(BareMetalNode.name, BareMetalNode.service_host))).all()
        name = next(n for n, host in rows if host == "svc-b")
        url = f"/v1/nodes/{name}/console"

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # no token: refused at A, not relayed
            await client_a.ws_connect(url)
        assert refused.value.status == 401
        with capture_logs() as logs:
            async with client_a.ws_connect(url, headers=auth(a)) as ws:
                peer = Peer(ws)
                assert (await peer.event(event="attached"))["role"] == "writer"
                await lab.sol([name], print_text="bmd-relay-marker: through svc-a\n")
                await peer.text(b"bmd-relay-marker: through svc-a")
                await ws.send_bytes(b"whoami\r")
                await peer.text(f"{name} login: ".encode())
        assert any(e["event"] == "console_forwarded" and e["owner"] == "svc-b" for e in logs)
        await eventually(lambda: lab.state(name), lambda s: not s["sol"]["active"], 10)
        assert (await lab.state(name))["sol"]["typed"] == "whoami\r"  # typed at A, reached the BMC through B

        assert (await client_a.get(f"/v1/nodes/{name}/console-log")).status == 401
        log = await client_a.get(f"/v1/nodes/{name}/console-log", headers=auth(a))
        assert log.status == 200 and b"bmd-relay-marker: through svc-a" in await log.read()
