"""The agent token (Ironic's model) against the real app on 127.0.0.1: nothing bmd serves for a waiting
node completes its deploy, the token goes once to the right boot (and the right address), every agent call
needs it, and it dies with the boot."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from bmd.db.models import BareMetalNode, Deployment, utcnow
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.drivers.power.base import BMCAccess, PowerState
from bmd.drivers.power.fake import FakePower
from bmd.provision.agent import same_address
from bmd.provision.recovery import fail_timed_out_deploys
from tests.cloud import Cloud, make_cloud

MAC = "52:54:00:00:01:00"  # node-1's interface in tests.cloud
CANDIDATE = re.compile(r"[A-Za-z0-9_\-.:/=]{8,}")


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


@dataclass
class Waiting:
    node_id: int
    node_uuid: str
    instance_uuid: str


async def deploy_until_waiting(cloud: Cloud, count: int = 1, pxe_ips: bool = True) -> list[Waiting]:
    ids = await cloud.enroll(count)
    if pxe_ips:
        await cloud.add_pxe_ips(count)
    out = []
    for _ in ids:
        status, body = await cloud.create()
        assert status == 202, body
        out.append(body["instances"][0]["uuid"])
    await cloud.settle()
    waiting = []
    for node_id in ids:
        node = await cloud.node(node_id)
        assert node.provision_state == "wait_callback", node.last_error
        assert node.instance_uuid is not None
        waiting.append(Waiting(node_id, node.uuid, node.instance_uuid))
    return waiting


async def lookup(cloud: Cloud, w: Waiting, session: aiohttp.ClientSession | None = None) -> tuple[int, Any]:
    url, body = cloud.client.make_url("/v1/agent/lookup"), {"node_uuid": w.node_uuid}
    if session is None:
        resp = await cloud.client.post("/v1/agent/lookup", json=body)
        return resp.status, await resp.json()
    async with session.post(url, json=body) as r:
        return r.status, await r.json()


def agent(token: str | None) -> dict[str, str]:
    return {} if token is None else {"X-Agent-Token": token}


async def image_status(cloud: Cloud, w: Waiting, token: str | None) -> int:
    resp = await cloud.client.get(f"/v1/agent/nodes/{w.node_uuid}/image", headers=agent(token))
    if resp.status != 200:
        body = await resp.json()
        assert set(body) == {"error", "message", "field"} and body["field"] == "X-Agent-Token"
    return resp.status


async def callback_status(cloud: Cloud, w: Waiting, token: str | None, **body: Any) -> int:
    url = f"/v1/nodes/{w.node_uuid}/vendor_passthru/pass_deploy_info"
    resp = await cloud.client.post(url, json={"error": None, **body}, headers=agent(token))
    return resp.status


async def deployment(cloud: Cloud, node_id: int) -> Deployment | None:
    async with cloud.ctx.sessionmaker() as session:
        return await session.scalar(select(Deployment).where(Deployment.bm_node_id == node_id))


def served_files(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


async def test_replaying_anything_bmd_serves_never_completes_the_deploy(cloud: Cloud) -> None:
    (w,) = await deploy_until_waiting(cloud)
    tftp, http = cloud.tftp_root, Path(cloud.ctx.settings.deploy.http_root)
    files = served_files(tftp, http)
    fetched = {}
    for path in files:  # every file under http_root, as an anonymous client gets it over HTTP
        if path.is_relative_to(http):
            resp = await cloud.client.get(f"/images/{path.relative_to(http).as_posix()}")
            if resp.status == 200:
                fetched[path] = await resp.read()
    assert any(p.name == "boot.ipxe" for p in fetched) and any(p.name == "config" for p in files)
    assert (await cloud.client.get(f"/images/{w.node_uuid}/disk")).status == 404  # no image for anonymous
    text = "\n".join(data.decode(errors="replace") for data in [*files.values(), *fetched.values()])
    candidates = set(CANDIDATE.findall(text))
    for word in text.split():  # every kernel argument, whole and by value
        candidates |= {word, word.partition("=")[2]}
    candidates = {c for c in candidates if re.fullmatch(r"[\x21-\x7e]{1,256}", c)}  # what a header can carry
    dep = await deployment(cloud, w.node_id)
    assert dep is not None and dep.key not in text  # the seed's key stays inside bmd
    assert f"bmd_node_uuid={w.node_uuid}" in text and len(candidates) > 20
    for candidate in sorted(candidates):
        assert await callback_status(cloud, w, candidate, key=candidate, deployment_id=dep.id) == 401
        assert await image_status(cloud, w, candidate) == 401
    assert await callback_status(cloud, w, None, key=dep.key, deployment_id=dep.id) == 401  # the old protocol
    assert await callback_status(cloud, w, dep.key) == 401
    node = await cloud.node(w.node_id)
    assert node.provision_state == "wait_callback" and node.deploy_deadline is not None
    assert (await deployment(cloud, w.node_id)).agent_token_issued_at is None  # type: ignore[union-attr]
    # ...while the real agent, which looks up its token, still deploys.
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202
    await cloud.settle()  # the finish runs as the node's job after the callback's answer
    assert (await cloud.node(w.node_id)).provision_state == "active"


async def test_with_pxe_ip_only_the_nodes_pxe_address_gets_the_token(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path, agent={"lookup_source": "pxe_ip"}) as cloud:
        pool = {"address": "127.0.0.77", "server_address": "127.0.0.1"}
        assert (await cloud.client.post("/v1/pxe_ips", json=pool, headers=cloud.auth)).status == 201
        (w,) = await deploy_until_waiting(cloud, pxe_ips=False)
        timeout = aiohttp.ClientTimeout(total=10)
        with capture_logs() as logs:
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as other:
                status, body = await lookup(cloud, w, other)
        assert (status, body["error"], body["field"]) == (403, "agent_lookup_refused", "peer")
        refusal = next(e for e in logs if e["event"] == "agent_lookup_wrong_source")
        assert (refusal["peer"], refusal["pxe_ip"]) == ("127.0.0.1", "127.0.0.77")
        assert (await deployment(cloud, w.node_id)).agent_token_issued_at is None  # type: ignore[union-attr]
        assert (await cloud.node(w.node_id)).provision_state == "wait_callback"  # refused, nothing failed
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.77", 0))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as node_side:
            status, body = await lookup(cloud, w, node_side)
        assert status == 200 and body["token"]
        dep = await deployment(cloud, w.node_id)
        assert dep is not None and dep.agent_address == "127.0.0.77"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("127.0.0.77", "127.0.0.77", True),
        ("::ffff:127.0.0.77", "127.0.0.77", True),
        ("127.0.0.77", "::ffff:127.0.0.77", True),
        ("fe80::1%eth0", "fe80::1", True),
        ("127.0.0.1", "127.0.0.77", False),
        ("::1", "127.0.0.1", False),
        (None, "127.0.0.77", False),
        ("127.0.0.77", None, False),
        ("not-an-ip", "not-an-ip", False),
    ],
)
def test_addresses_compare_as_ip_addresses(a: str | None, b: str | None, same: bool) -> None:
    assert same_address(a, b) is same


async def test_a_second_lookup_is_refused_and_fails_the_deploy(cloud: Cloud) -> None:
    (w,) = await deploy_until_waiting(cloud)
    status, first = await lookup(cloud, w)
    assert status == 200 and len(first["token"]) >= 43
    assert first["image_url"].endswith(f"/v1/agent/nodes/{w.node_uuid}/image")
    assert first["image_checksum"] == cloud.image_checksum and first["root_mb"] == 200 * 1024
    with capture_logs() as logs:
        status, second = await lookup(cloud, w)
    assert (status, second["error"]) == (409, "agent_token_already_issued") and "token" not in second
    event = next(e for e in logs if e["event"] == "agent_token_reissue_refused")
    assert event["log_level"] == "error"
    assert (event["node"], event["peer"], event["first_address"]) == (w.node_id, "127.0.0.1", "127.0.0.1")
    assert first["token"] not in repr(logs)
    node = await cloud.node(w.node_id)
    assert node.provision_state == "error" and node.deploy_deadline is None
    assert "a second agent token lookup came from 127.0.0.1" in (node.last_error or "")
    inst = await cloud.instance(w.instance_uuid)
    assert inst.vm_state == "error" and "second agent token lookup" in (inst.last_error or "")
    # the first token is dead too, and nothing would boot the node into the deploy ramdisk again
    assert await image_status(cloud, w, first["token"]) == 401
    assert await callback_status(cloud, w, first["token"]) == 401
    assert not (cloud.tftp_root / w.node_uuid).exists() and not list((cloud.tftp_root / "pxelinux.cfg").iterdir())
    assert (await cloud.client.delete(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)).status == 202
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "available"


async def test_a_deploys_image_wants_that_deploys_token(cloud: Cloud) -> None:
    a, b = await deploy_until_waiting(cloud, 2)
    (sa, ta), (sb, tb) = await lookup(cloud, a), await lookup(cloud, b)
    assert sa == sb == 200
    assert await image_status(cloud, a, None) == 401
    assert await image_status(cloud, a, "x" * 43) == 401
    assert await image_status(cloud, a, tb["token"]) == 401  # another node's token
    assert await image_status(cloud, a, ta["token"][:-1]) == 401
    source = await asyncio.to_thread(Path(cloud.image_ref).read_bytes)
    url = f"/v1/agent/nodes/{a.node_uuid}/image"
    resp = await cloud.client.get(url, headers={**agent(ta["token"]), "Range": "bytes=100-199"})
    assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 100-199/{len(source)}"
    assert await resp.read() == source[100:200]
    head = await cloud.client.head(url, headers=agent(ta["token"]))
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(source)
    no_token_head = await cloud.client.head(url)
    assert no_token_head.status == 401
    heartbeat = f"/v1/agent/nodes/{a.node_uuid}/heartbeat"
    assert (await cloud.client.post(heartbeat, json={"message": "hi"})).status == 401
    assert (await cloud.client.post(heartbeat, json={"message": "hi"}, headers=agent(tb["token"]))).status == 401
    assert (await cloud.client.post(heartbeat, json={"message": "hi"}, headers=agent(ta["token"]))).status == 202
    for w in (a, b):
        assert (await cloud.node(w.node_id)).provision_state == "wait_callback"


async def end_boot(cloud: Cloud, w: Waiting, token: str, how: str) -> str:
    if how == "success":
        assert await callback_status(cloud, w, token) == 202
        await cloud.settle()  # the finish is the node's job, started by the callback
    elif how == "failure":
        assert await callback_status(cloud, w, token, error="disk /dev/sda not found") == 202
    elif how == "timeout":
        async with cloud.ctx.sessionmaker.begin() as session:  # the clock moves past the deadline
            late = {"deploy_deadline": utcnow() - dt.timedelta(seconds=1)}
            await session.execute(update(BareMetalNode).where(BareMetalNode.id == w.node_id).values(**late))
        assert await fail_timed_out_deploys(cloud.ctx.conductor) == 1
    else:
        assert (await cloud.client.delete(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)).status == 202
        await cloud.settle()
    return (await cloud.node(w.node_id)).provision_state


@pytest.mark.parametrize(
    ("how", "state"), [("success", "active"), ("failure", "error"), ("timeout", "error"), ("delete", "available")]
)
async def test_the_token_dies_with_the_boot(cloud: Cloud, how: str, state: str) -> None:
    (w,) = await deploy_until_waiting(cloud)
    status, body = await lookup(cloud, w)
    token = body["token"]
    assert status == 200 and await image_status(cloud, w, token) == 200
    assert await end_boot(cloud, w, token, how) == state
    assert await image_status(cloud, w, token) == 401
    assert await callback_status(cloud, w, token) == 401
    assert await callback_status(cloud, w, token, error="late") == 401
    heartbeat = f"/v1/agent/nodes/{w.node_uuid}/heartbeat"
    assert (await cloud.client.post(heartbeat, json={}, headers=agent(token))).status == 401
    assert (await cloud.node(w.node_id)).provision_state == state  # the refused calls changed nothing
    dep = await deployment(cloud, w.node_id)
    assert dep is None or dep.agent_token_hash is None
    assert (await lookup(cloud, w))[0] == 409  # and no boot waits for an agent: no new token


class HeldPower(FakePower):
    """The fake driver, except that powering on waits for ``go``: the spawn stops just before bmd boots
    the node, with its boot files already served."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.holding = asyncio.Event()

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        if state is PowerState.ON:
            self.holding.set()
            await self.go.wait()
        await super().set_power_state(access, state)


async def test_no_token_before_bmd_powered_the_node_on(cloud: Cloud) -> None:
    held = HeldPower()
    cloud.ctx.power.register("fake", held)  # the same plugin name, this instance
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202, body
    async with asyncio.timeout(30):
        await held.holding.wait()
    node = await cloud.node(node_id)
    w = Waiting(node_id, node.uuid, body["instances"][0]["uuid"])
    assert node.provision_state == "deploying" and (cloud.tftp_root / node.uuid / "config").exists()
    assert (await deployment(cloud, node_id)).booted_at is None  # type: ignore[union-attr]
    status, refused = await lookup(cloud, w)
    assert (status, refused["error"]) == (409, "invalid_state")
    held.go.set()
    await cloud.settle()
    dep = await deployment(cloud, node_id)
    assert dep is not None and dep.booted_at is not None and dep.agent_token_issued_at is None
    # A waiting deploy whose boot bmd did not record (one started before revision 0002): no token either.
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(update(Deployment).where(Deployment.id == dep.id).values(booted_at=None))
    status, refused = await lookup(cloud, w)
    assert status == 409 and "has not powered it on" in refused["message"]
    assert (await cloud.node(node_id)).provision_state == "wait_callback"
