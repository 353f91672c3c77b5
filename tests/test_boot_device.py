"""Reads do not drive hardware anonymously: ``GET .../management/boot_device`` serves the last known value
with its age; only an authenticated ``?live=true`` asks the BMC, one call in flight per node however many
ask, within the driver's cap. Counted at the fake driver (a registered plugin) and at real lab BMCs."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from bmd.api.app import create_app
from bmd.api.power import BOOT_READS, LiveBootDeviceReads
from bmd.context import AppContext
from bmd.db.models import BareMetalNode, utcnow
from bmd.drivers.power.base import BootDevice, BootDeviceInfo
from bmd.errors import BMCUnreachable
from bmd.lab import Lab, LabSpec
from bmd.lab.faults import Fault
from bmd.service import open_context
from tests.cloud import Cloud, make_cloud
from tests.conftest import make_settings

PATH = "/v1/nodes/{}/management/boot_device"


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


def reads_of(client: TestClient[Any, Any]) -> LiveBootDeviceReads:
    return client.server.app[BOOT_READS]


async def until(what: str, check: Callable[[], bool], deadline: float = 10.0) -> None:
    """Yield to the loop until ``check()`` holds (in-process state: no sleeping, only turns of the loop)."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"{what} did not happen within {deadline} s"
        await asyncio.sleep(0)


async def get(client: TestClient[Any, Any], node: int | str, live: bool = False, **headers: str) -> Any:
    resp = await client.get(PATH.format(node) + ("?live=true" if live else ""), headers=headers)
    return resp.status, await resp.json()


async def test_anonymous_reads_serve_the_last_known_value_without_a_bmc_call(cloud: Cloud) -> None:
    (node,) = await cloud.enroll(1)
    bmc = cloud.fake.bmc(node)
    status, never = await get(cloud.client, node)
    assert status == 200
    assert never == {"boot_device": None, "persistent": None, "checked_at": None, "age_seconds": None,
                     "source": "cache"}  # fmt: skip
    resp = await cloud.client.put(
        PATH.format(node), json={"boot_device": "pxe", "persistent": True}, headers=cloud.auth
    )
    assert resp.status == 200 and bmc.calls == ["set_boot_device:pxe"]
    stored = await cloud.node(node)
    assert (stored.boot_device, stored.boot_device_persistent) == ("pxe", True) and stored.boot_device_checked_at

    bmc.calls.clear()
    results = await asyncio.gather(*(get(cloud.client, node) for _ in range(50)))
    assert bmc.calls == []  # fifty anonymous reads, not one BMC call
    for status, body in results:
        assert status == 200 and body["source"] == "cache"
        assert (body["boot_device"], body["persistent"]) == ("pxe", True) and body["age_seconds"] >= 0

    # The age is the stored value's: 90 s ago is served as 90 s old.
    async with cloud.ctx.sessionmaker.begin() as session:
        ninety = utcnow() - dt.timedelta(seconds=90)
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == node).values(boot_device_checked_at=ninety)
        )
    _, old = await get(cloud.client, node)
    assert 90 <= old["age_seconds"] < 120 and dt.datetime.fromisoformat(old["checked_at"]) == ninety
    assert bmc.calls == []


async def test_live_read_needs_the_token(cloud: Cloud) -> None:
    (node,) = await cloud.enroll(1)
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic eDp5"}):
        status, body = await get(cloud.client, node, live=True, **headers)
        assert status == 401 and body["error"] == "unauthorized", (headers, body)
    resp = await cloud.client.get(PATH.format(node) + "?live=maybe", headers=cloud.auth)
    assert resp.status == 400 and (await resp.json())["field"] == "live"
    assert cloud.fake.bmc(node).calls == []
    status, body = await get(cloud.client, node, live=False, **cloud.auth)  # ?live=false: the cache, token or not
    assert status == 200 and body["source"] == "cache" and cloud.fake.bmc(node).calls == []


async def test_authenticated_live_read_asks_the_bmc_once_and_updates_the_cache(cloud: Cloud) -> None:
    (node,) = await cloud.enroll(1)
    bmc = cloud.fake.bmc(node)
    bmc.boot = BootDeviceInfo(BootDevice.DISK, True)  # changed behind bmd's back
    _, before = await get(cloud.client, node)
    assert before["boot_device"] is None and before["source"] == "cache"
    status, live = await get(cloud.client, node, live=True, **cloud.auth)
    assert status == 200 and bmc.calls == ["get_boot_device"]
    assert (live["boot_device"], live["persistent"], live["source"]) == ("disk", True, "bmc")
    _, after = await get(cloud.client, node)
    assert (after["boot_device"], after["persistent"], after["source"]) == ("disk", True, "cache")
    assert after["checked_at"] == live["checked_at"] and bmc.calls == ["get_boot_device"]


async def test_concurrent_live_reads_of_one_node_share_one_bmc_call(cloud: Cloud) -> None:
    first, second = await cloud.enroll(2)
    bmc = cloud.fake.bmc(first)
    bmc.boot = BootDeviceInfo(BootDevice.BIOS, False)
    bmc.gate = asyncio.Event()  # the BMC answers only when told
    reads = reads_of(cloud.client)
    calls = [asyncio.create_task(get(cloud.client, first, live=True, **cloud.auth)) for _ in range(20)]
    await until("20 live reads waiting on the BMC", lambda: reads.waiting(first) == 20)
    assert bmc.calls == ["get_boot_device"] and bmc.in_flight == 1
    # another node is not held up by this one's call
    assert (await get(cloud.client, second, live=True, **cloud.auth))[0] == 200
    bmc.gate.set()
    results = await asyncio.gather(*calls)
    assert all(status == 200 and body["boot_device"] == "bios" for status, body in results)
    assert len({body["checked_at"] for _, body in results}) == 1  # one answer, shared
    assert bmc.calls == ["get_boot_device"] and bmc.max_in_flight == 1 and reads.waiting(first) == 0
    # Done is done: the next live read asks again.
    assert (await get(cloud.client, first, live=True, **cloud.auth))[0] == 200
    assert bmc.calls == ["get_boot_device"] * 2


async def test_a_failing_live_read_is_shared_and_leaves_the_cache_alone(cloud: Cloud) -> None:
    (node,) = await cloud.enroll(1)
    resp = await cloud.client.put(PATH.format(node), json={"boot_device": "disk"}, headers=cloud.auth)
    assert resp.status == 200
    bmc = cloud.fake.bmc(node)
    bmc.calls.clear()
    bmc.gate = asyncio.Event()
    cloud.fake.inject_failure(node, BMCUnreachable("no route to the BMC"))
    calls = [asyncio.create_task(get(cloud.client, node, live=True, **cloud.auth)) for _ in range(5)]
    await until("5 live reads waiting", lambda: reads_of(cloud.client).waiting(node) == 5)
    bmc.gate.set()
    for status, body in await asyncio.gather(*calls):
        assert status == 502 and body["error"] == "bmc_unreachable"
    assert bmc.calls == ["get_boot_device"]
    _, cached = await get(cloud.client, node)
    assert cached["boot_device"] == "disk" and cached["source"] == "cache"


async def test_provisioning_records_the_boot_device_it_sets(cloud: Cloud) -> None:
    (node,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    _, cached = await get(cloud.client, node)
    assert (cached["boot_device"], cached["persistent"], cached["source"]) == ("pxe", False, "cache")
    assert "get_boot_device" not in cloud.fake.bmc(node).calls


# -- real lab BMCs over IPMI --------------------------------------------------------------------------

LAB = {
    "ipmi": {"timeout": 3.0, "retries": 1, "min_command_interval": 0.0, "max_in_flight": 2},
    "driver": {"default_power_driver": "ipmi"},
}


@pytest.fixture
async def lab_env(tmp_path: Path, db_file: Path) -> AsyncIterator[tuple[AppContext, TestClient[Any, Any], Lab]]:
    async with Lab(LabSpec(count=2)) as lab, open_context(make_settings(tmp_path, **LAB)) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            auth = {"Authorization": f"Bearer {ctx.api_token}"}
            resp = await client.post("/v1/nodes/import", json={"nodes": lab.inventory()}, headers=auth)
            assert resp.status == 201, await resp.text()
            yield ctx, client, lab


async def test_a_dead_bmc_holds_one_call_not_fifty(lab_env: tuple[AppContext, TestClient[Any, Any], Lab]) -> None:
    """ipmi.max_in_flight = 2: fifty uncoalesced calls to a dead BMC would hold both slots for 25 timeouts,
    and the healthy node's read would wait behind them."""
    ctx, client, lab = lab_env
    dead, alive = (b.name for b in lab.bmcs)
    auth = {"Authorization": f"Bearer {ctx.api_token}"}
    await lab.set_fault([dead], Fault("dead"))
    await lab.reset_stats()

    anonymous = await asyncio.gather(*(get(client, dead) for _ in range(50)))
    assert all(status == 200 and body["source"] == "cache" for status, body in anonymous)
    assert (await lab.state(dead))["stats"].get("ignored", 0) == 0  # not one datagram reached the BMC

    reads = reads_of(client)
    dead_id = int((await (await client.get(f"/v1/nodes/{dead}")).json())["id"])
    calls = [asyncio.create_task(get(client, dead, live=True, **auth)) for _ in range(50)]
    await until("50 live reads waiting on the dead BMC", lambda: reads.waiting(dead_id) == 50)
    status, alive_live = await get(client, alive, live=True, **auth)  # gets the other slot at once
    assert status == 200 and alive_live["source"] == "bmc"
    assert not any(c.done() for c in calls)  # ... while the dead BMC's one call is still out
    results = await asyncio.gather(*calls)
    assert all(status == 504 and body["error"] == "bmc_timeout" for status, body in results)
    assert (await lab.state(dead))["stats"].get("ignored", 0) > 0  # the one call did try
    _, cached = await get(client, alive)
    assert cached["source"] == "cache" and cached["checked_at"] == alive_live["checked_at"]
    _, cached = await get(client, dead)
    assert cached["checked_at"] is None  # a failed read records nothing
