"""Power through real lab BMCs on loopback: the API and CLI verbs, sync_power_states with every fault,
maintenance on repeated failure and automatic recovery, and Debian's ipmitool as an independent peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.context import AppContext
from bmd.db.models import BareMetalNode
from bmd.drivers.power.base import BMCAccess, PowerInterface, PowerState
from bmd.drivers.power.fake import FakePower
from bmd.lab import Lab, LabSpec
from bmd.lab.cluster import insert_nodes
from bmd.lab.faults import Fault
from bmd.service import open_context
from bmd.tasks.sync_power_states import SyncPowerStates
from tests.conftest import make_settings
from tests.ipmi.helpers import needs_ipmitool, run_ipmitool

FAST = {
    "ipmi": {"timeout": 1.0, "retries": 1, "min_command_interval": 0.0},
    "tasks": {"power_sync_timeout": 1.0, "power_sync_max_retries": 2, "power_sync_workers": 4},
    "driver": {"default_power_driver": "ipmi"},
}


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with Lab(LabSpec(count=6)) as running:
        yield running


@pytest.fixture
async def env(tmp_path: Path, db_file: Path, lab: Lab) -> AsyncIterator[tuple[AppContext, TestClient[Any, Any]]]:
    async with open_context(make_settings(tmp_path, **FAST)) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            auth = {"Authorization": f"Bearer {ctx.api_token}"}
            resp = await client.post("/v1/nodes/import", json={"nodes": lab.inventory()}, headers=auth)
            assert resp.status == 201, await resp.text()
            yield ctx, client


def auth(ctx: AppContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.api_token}"}


async def node_row(ctx: AppContext, name: str) -> BareMetalNode:
    async with ctx.sessionmaker() as session:
        node = await session.scalar(select(BareMetalNode).where(BareMetalNode.name == name))
        assert node is not None
        return node


def sync_task(ctx: AppContext, release_after: float = 0.25, **overrides: Any) -> SyncPowerStates:
    tasks = ctx.settings.tasks.model_copy(update=overrides)
    return SyncPowerStates(ctx.sessionmaker, ctx.power, ctx.settings.service.host, tasks, release_after)


async def test_power_verbs_through_the_api(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, client = env
    name = lab.bmcs[0].name
    resp = await client.put(f"/v1/nodes/{name}/states/power", json={"target": "power on"}, headers=auth(ctx))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["power_state"] == "power on"
    assert (await lab.state(name))["power"] is True
    resp = await client.put(f"/v1/nodes/{name}/states/power", json={"target": "reboot"}, headers=auth(ctx))
    assert (
        resp.status == 200
        and (await lab.state(name))["stats"].get("power_cycle", 0) + (await lab.state(name))["stats"].get("boots", 0)
        >= 1
    )
    resp = await client.put(f"/v1/nodes/{name}/states/power", json={"target": "power off"}, headers=auth(ctx))
    assert (await resp.json())["power_state"] == "power off" and (await lab.state(name))["power"] is False
    states = await (await client.get(f"/v1/nodes/{name}/states")).json()
    assert states["power_state"] == "power off" and states["last_power_check"]

    body = {"boot_device": "pxe", "persistent": True}
    resp = await client.put(f"/v1/nodes/{name}/management/boot_device", json=body, headers=auth(ctx))
    assert resp.status == 200
    boot = (await lab.state(name))["boot"]
    assert boot["persistent"] is True and boot["selector"] == 1  # 1: PXE in the boot flags
    cached = await (await client.get(f"/v1/nodes/{name}/management/boot_device")).json()
    assert cached["source"] == "cache" and {k: cached[k] for k in body} == body  # recorded by the PUT
    resp = await client.get(f"/v1/nodes/{name}/management/boot_device?live=true", headers=auth(ctx))
    live = await resp.json()
    assert resp.status == 200 and live["source"] == "bmc" and {k: live[k] for k in body} == body

    resp = await client.put(f"/v1/nodes/{name}/states/power", json={"target": "on"}, headers=auth(ctx))
    assert resp.status == 400 and (await resp.json())["field"] == "target"


async def test_bad_password_is_an_auth_error_without_retry(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, client = env
    name = lab.bmcs[1].name
    await lab.set_fault([name], Fault("badpass"))
    await lab.reset_stats([name])
    resp = await client.put(f"/v1/nodes/{name}/states/power", json={"target": "power on"}, headers=auth(ctx))
    assert resp.status == 502 and (await resp.json())["error"] == "bmc_auth_error"
    stats = (await lab.state(name))["stats"]
    assert stats.get("power_on", 0) == 0


async def test_sync_records_states_and_sees_ipmitool_changes(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    await sync_task(ctx).run_once()
    for b in lab.bmcs:
        node = await node_row(ctx, b.name)
        assert node.power_state == "power off" and node.last_power_check is not None and node.power_failures == 0


async def test_an_unchanged_sync_moves_the_check_time_and_clears_a_kept_error(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    """Nodes whose reading changed nothing are written in one statement: their check time still moves, and
    an error left behind with no failure counted (lifting maintenance resets only the count) is cleared."""
    ctx, _ = env
    task = sync_task(ctx)
    await task.run_once()
    before = {b.name: (await node_row(ctx, b.name)).last_power_check for b in lab.bmcs}
    stale = lab.bmcs[0].name
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.name == stale).values(last_power_error="BMCTimeout: old")
        )
    await task.run_once()
    for b in lab.bmcs:
        node = await node_row(ctx, b.name)
        assert node.power_state == "power off" and node.power_failures == 0 and node.last_power_error is None
        assert node.last_power_check is not None and node.last_power_check > before[b.name]


@needs_ipmitool
async def test_ipmitool_changes_are_seen_at_the_next_sync(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    b = lab.bmcs[2]
    task = sync_task(ctx)
    await task.run_once()
    code, out = await run_ipmitool(b.host, b.port, "chassis", "power", "on")
    assert code == 0, out
    code, out = await run_ipmitool(b.host, b.port, "chassis", "bootdev", "pxe")
    assert code == 0, out
    await task.run_once()
    assert (await node_row(ctx, b.name)).power_state == "power on"
    driver, access = ctx.power.for_node(await node_row(ctx, b.name))
    assert (await driver.get_boot_device(access)).device == "pxe"
    code, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status")
    assert code == 0 and "on" in out.lower()


async def test_dead_bmc_goes_to_maintenance_and_recovers(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    dead = lab.bmcs[3].name
    await lab.set_fault([dead], Fault("dead"))
    task = sync_task(ctx)
    with capture_logs() as logs:
        await task.run_once()
        node = await node_row(ctx, dead)
        assert node.power_failures == 1 and not node.maintenance and "BMCTimeout" in (node.last_power_error or "")
        await task.run_once()
    node = await node_row(ctx, dead)
    assert node.maintenance and node.maintenance_set_by == "power_sync"
    assert (node.maintenance_reason or "").startswith("power failure: BMCTimeout")
    assert node.power_state == "error"
    assert "node_power_failure_maintenance" in [e["event"] for e in logs]
    others = [await node_row(ctx, b.name) for b in lab.bmcs if b.name != dead]
    assert all(n.power_state == "power off" and not n.maintenance for n in others)  # only its own node

    await lab.set_fault([dead], None)
    await task.run_once()
    node = await node_row(ctx, dead)
    assert not node.maintenance and node.maintenance_reason is None and node.power_failures == 0
    assert node.power_state == "power off"


async def test_operator_maintenance_is_never_lifted(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, client = env
    name = lab.bmcs[4].name
    resp = await client.put(f"/v1/nodes/{name}/maintenance", json={"reason": "disk swap"}, headers=auth(ctx))
    assert resp.status == 200
    await sync_task(ctx).run_once()
    node = await node_row(ctx, name)
    assert node.maintenance and node.maintenance_reason == "disk swap" and node.maintenance_set_by == "operator"
    assert (await client.delete(f"/v1/nodes/{name}/maintenance", headers=auth(ctx))).status == 200
    assert not (await node_row(ctx, name)).maintenance


async def test_flapping_bmc_maintenance_then_automatic_recovery(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    name = lab.bmcs[5].name
    await lab.set_fault([name], Fault("flap", 0.0))  # starts dead; flap_step toggles
    task = sync_task(ctx)
    await task.run_once()
    await task.run_once()
    assert (await node_row(ctx, name)).maintenance
    await lab.flap_step([name])  # alive
    await task.run_once()
    node = await node_row(ctx, name)
    assert not node.maintenance and node.power_state == "power off"
    await lab.flap_step([name])  # dead again: one failure, not yet maintenance
    await task.run_once()
    node = await node_row(ctx, name)
    assert node.power_failures == 1 and not node.maintenance


class Counting(PowerInterface):
    """Wraps the real ipmi driver and records how many reads are in flight at once."""

    name = "counting"

    def __init__(self, inner: PowerInterface) -> None:
        self.inner = inner
        self.in_flight = 0
        self.peak = 0

    async def get_power_state(self, access: BMCAccess) -> PowerState:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.inner.get_power_state(access)
        finally:
            self.in_flight -= 1

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        await self.inner.set_power_state(access, state)

    async def reboot(self, access: BMCAccess) -> None:
        await self.inner.reboot(access)

    async def set_boot_device(self, access, device, persistent=False) -> None:  # type: ignore[no-untyped-def]
        await self.inner.set_boot_device(access, device, persistent)

    async def get_boot_device(self, access):  # type: ignore[no-untyped-def]
        return await self.inner.get_boot_device(access)


async def test_dead_bmcs_wait_in_parallel_not_one_worker_each(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    dead = [b.name for b in lab.bmcs[:3]]
    await lab.set_fault(dead, Fault("dead"))
    counting = Counting(ctx.power.get("ipmi"))
    ctx.power.register("ipmi", counting)
    task = sync_task(ctx, release_after=0.05, power_sync_workers=1)
    with capture_logs():
        await task.run_once()
    assert task.last_pass["failed"] == 3 and task.last_pass["nodes"] == 6
    # one worker, yet the three dead BMCs waited out their timeouts together: a read that does not answer
    # within release_after gives the worker back
    assert counting.peak >= 3
    # next pass: the failed ones are polled first
    order: list[int] = []
    original = counting.get_power_state

    async def recording(access: BMCAccess) -> PowerState:
        order.append(access.node_id)
        return await original(access)

    counting.get_power_state = recording  # type: ignore[method-assign]
    await task.run_once()
    dead_ids = {(await node_row(ctx, n)).id for n in dead}
    assert set(order[:3]) == dead_ids


async def test_mismatch_is_logged_and_forced_when_configured(env, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = env
    on_name, active_name = lab.bmcs[0].name, lab.bmcs[1].name
    await lab.set_state([on_name], power=True)  # a free node left on
    async with ctx.sessionmaker.begin() as session:  # an active instance whose machine is off
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.name == active_name)
            .values(provision_state="active", instance_uuid="11111111-1111-1111-1111-111111111111")
        )
    with capture_logs() as logs:
        await sync_task(ctx).run_once()
    mismatches = {e["node"]: e for e in logs if e["event"] == "power_state_mismatch"}
    assert {mismatches[n]["expected"] for n in mismatches} == {"power on", "power off"}
    assert (await lab.state(on_name))["power"] is True  # only logged

    await sync_task(ctx, force_power_state_during_sync=True).run_once()
    assert (await lab.state(on_name))["power"] is False
    assert (await lab.state(active_name))["power"] is True
    assert (await node_row(ctx, active_name)).power_state == "power on"


async def test_power_cli(env, lab: Lab, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.test_cli import run_cli

    ctx, client = env
    name = lab.bmcs[0].name
    code, out, err = await run_cli(client, ctx.api_token, "node", "power", "on", name, capsys=capsys)
    assert code == 0, err
    assert (await lab.state(name))["power"] is True
    code, out, _ = await run_cli(client, None, "node", "power", "status", name, "-f", "json", capsys=capsys)
    assert code == 0 and '"power on"' in out
    code, out, _ = await run_cli(client, ctx.api_token, "node", "boot-device", name, "disk", capsys=capsys)
    assert code == 0 and (await lab.state(name))["boot"]["selector"] == 2  # 2: hard disk
    code, _, _ = await run_cli(
        client, ctx.api_token, "node", "maintenance", "set", name, "--reason", "x", capsys=capsys
    )
    assert code == 0 and (await node_row(ctx, name)).maintenance


async def test_pass_over_thousands_runs_on_a_few_tasks_and_cancels_every_read(ctx: AppContext) -> None:
    """A pass over 3,000 nodes holds its workers and its slow reads, not a task per node (100,000 waiting
    tasks took seconds to create and minutes to cancel); cancelled (the service stopping), it leaves no
    read running, not even the ones parked past ``release_after``."""
    fake = FakePower()
    ctx.power.register("fake", fake)
    await insert_nodes(ctx.settings.database.url, ctx.settings.service.host, 3000)
    async with ctx.sessionmaker() as session:
        ids = list((await session.scalars(select(BareMetalNode.id).order_by(BareMetalNode.id))).all())
    gate = asyncio.Event()  # never set: these BMCs never answer
    slow = ids[100:105]
    for node_id in slow:
        fake.bmc(node_id).gate = gate
    sync = sync_task(ctx, release_after=0.01, power_sync_workers=8, power_sync_timeout=60.0)
    before = len(asyncio.all_tasks())
    running = asyncio.create_task(sync.run_once())
    most = 0
    async with asyncio.timeout(60):
        while not all(fake.bmc(i).calls for i in ids):  # every node read once, the slow ones parked
            most = max(most, len(asyncio.all_tasks()) - before)
            await asyncio.sleep(0)
    assert [fake.bmc(i).in_flight for i in slow] == [1] * 5
    assert most <= 1 + 8 + 8 + len(slow)  # the pass, its workers, their reads, the parked reads
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert [fake.bmc(i).in_flight for i in slow] == [0] * 5  # the parked reads were cancelled with the pass
    assert len(asyncio.all_tasks()) == before
