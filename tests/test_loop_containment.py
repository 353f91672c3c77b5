"""One bad record never stops a fleet-wide loop: poisoned rows written straight into bm_nodes (past the API's
validation) fail only their own node; every loop's pass goes on for the healthy ones, records the error on
the poisoned node, logs it once and counts it in /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, text, update
from structlog.testing import capture_logs

from bmd.api.app import create_app
from bmd.api.metrics import render
from bmd.db.models import BareMetalNode, ComputeNode
from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerInterface, PowerState
from bmd.drivers.power.fake import FakePower
from bmd.lab import Lab, LabSpec
from bmd.scheduler.manager import SchedulerRefresh
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus
from bmd.tasks.steps import NodeSteps
from bmd.tasks.sync_power_states import SyncPowerStates
from bmd.tasks.update_available_resource import UpdateAvailableResource
from tests.cloud import Cloud, make_cloud
from tests.conftest import make_settings
from tests.test_capabilities import add_nodes


class BrokenPower(PowerInterface):
    """A third-party driver with a bug: every verb raises something that is not a bmd error."""

    name = "broken"

    async def get_power_state(self, access: BMCAccess) -> PowerState:
        raise RuntimeError("driver bug")

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        raise RuntimeError("driver bug")

    async def reboot(self, access: BMCAccess) -> None:
        raise RuntimeError("driver bug")

    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None:
        raise RuntimeError("driver bug")

    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo:
        raise RuntimeError("driver bug")


class ExplodingFakePower(FakePower):
    """The fake driver, but forcing power raises a non-bmd error (reads work)."""

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        raise OSError("socket gone")


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        c.ctx.power.register("broken", BrokenPower())
        yield c


def power_loop(cloud: Cloud, **overrides: Any) -> SyncPowerStates:
    tasks = cloud.ctx.settings.tasks.model_copy(update=overrides)
    return SyncPowerStates(
        cloud.ctx.sessionmaker, cloud.ctx.power, "test-host", tasks, 0.25, failures=cloud.ctx.step_failures
    )


async def nodes(cloud: Cloud) -> dict[int, BareMetalNode]:
    async with cloud.ctx.sessionmaker() as session:
        return {n.id: n for n in (await session.execute(select(BareMetalNode))).scalars()}


def failures_metric(cloud: Cloud, task: str) -> float:
    for line in render(cloud.ctx).splitlines():
        if line.startswith(f'bmd_node_step_failures_total{{task="{task}"}} '):
            return float(line.split()[-1])
    return 0.0


# pm_driver, pm_address, pm_password (stored as is) -> the error the node gets
POISON = [
    pytest.param("ipmi", "::::", None, "pm_address", id="ipmi-not-an-address"),
    pytest.param("ipmi", "10.0.0.1:99999", None, "port must be 1-65535", id="ipmi-port-out-of-range"),
    pytest.param("fake", "fake-x", "not-a-bmd-secret", "not encrypted by bmd", id="password-does-not-decrypt"),
    pytest.param("no-such-driver", "h", None, "unknown name", id="unknown-driver"),
    pytest.param("broken", "h", None, "RuntimeError: driver bug", id="driver-raises"),
]


@pytest.mark.parametrize(("driver", "address", "password", "error"), POISON)
async def test_a_poisoned_node_fails_alone_in_the_power_loop(
    cloud: Cloud, driver: str, address: str, password: str | None, error: str
) -> None:
    healthy = await cloud.enroll(3)
    poisoned = (await add_nodes(cloud.ctx, 1, pm_driver=driver, pm_address=address, pm_user="admin"))[0]
    if password is not None:
        async with cloud.ctx.sessionmaker.begin() as session:
            poison = update(BareMetalNode).where(BareMetalNode.id == poisoned).values(pm_password=password)
            await session.execute(poison)
    loop = power_loop(cloud, power_sync_max_retries=3)
    with capture_logs() as logs:
        for _ in range(2):
            await loop.run_once()
    rows = await nodes(cloud)
    for node_id in healthy:  # read and recorded
        assert rows[node_id].last_power_check is not None and rows[node_id].last_power_error is None
        assert rows[node_id].power_failures == 0
    bad = rows[poisoned]
    assert bad.last_power_error is not None and error in bad.last_power_error
    assert bad.power_failures == 2 and bad.last_power_check is not None
    assert loop.last_pass == {"nodes": 4, "failed": 1, "to_maintenance": 0, "recovered": 0}
    if driver == "broken":  # an unexpected exception: counted and logged once, on the transition
        assert failures_metric(cloud, "sync_power_states") == 2
        assert [e["node"] for e in logs if e["event"] == "node_step_failed"] == [poisoned]


async def test_a_force_that_raises_does_not_end_the_pass(cloud: Cloud) -> None:
    exploding = ExplodingFakePower()
    cloud.ctx.power.register("fake", exploding)
    healthy = await cloud.enroll(3)
    exploding.bmc(healthy[0]).power = PowerState.ON  # free but on: the loop forces it off, which raises
    loop = power_loop(cloud, force_power_state_during_sync=True)
    await loop.run_once()
    rows = await nodes(cloud)
    assert all(rows[n].last_power_check is not None for n in healthy)
    assert rows[healthy[0]].power_state == "power on"  # what was read stands
    assert failures_metric(cloud, "sync_power_states") == 1
    assert loop.steps.failing.keys() == {healthy[0]}


async def poison_resources(cloud: Cloud) -> int:
    """A row the API would never write: text where a number belongs, and capabilities that are not a dict."""
    poisoned = (await add_nodes(cloud.ctx, 1, pm_address="fake-p"))[0]
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE bm_nodes SET memory_mb = 'lots', extra_specs = '[1, 2]' WHERE id = :id"), {"id": poisoned}
        )
    return poisoned


async def test_a_poisoned_node_fails_alone_in_report_driver_status(cloud: Cloud) -> None:
    healthy = await cloud.enroll(3)
    poisoned = await poison_resources(cloud)
    loop = ReportDriverStatus(cloud.ctx.driver, cloud.ctx.bus, "127.0.0.1", 60, cloud.ctx.step_failures)
    with capture_logs() as logs:
        for _ in range(3):
            await loop.run_once()
    published = cloud.ctx.bus.latest(TOPIC)
    assert [int(s["node"]) for s in published] == healthy
    assert all(s["deploy_ready"] for s in published)
    rows = await nodes(cloud)
    assert (rows[poisoned].last_error or "").startswith("report_driver_status: ")
    assert all(rows[n].last_error is None for n in healthy)
    assert failures_metric(cloud, "report_driver_status") == 3  # every failed step counts
    assert [e["node"] for e in logs if e["event"] == "node_step_failed"] == [poisoned]  # logged once

    async with cloud.ctx.sessionmaker.begin() as session:  # repaired: the error it wrote is cleared
        await session.execute(
            text("UPDATE bm_nodes SET memory_mb = 1024, extra_specs = '{}' WHERE id = :id"), {"id": poisoned}
        )
    with capture_logs() as logs:
        await loop.run_once()
    assert [int(s["node"]) for s in cloud.ctx.bus.latest(TOPIC)] == [*healthy, poisoned]
    assert (await nodes(cloud))[poisoned].last_error is None
    assert [e["node"] for e in logs if e["event"] == "node_step_recovered"] == [poisoned]


async def test_recovery_leaves_an_error_the_loop_did_not_write(cloud: Cloud) -> None:
    await cloud.enroll(1)
    poisoned = await poison_resources(cloud)
    loop = ReportDriverStatus(cloud.ctx.driver, cloud.ctx.bus, "127.0.0.1", 60)
    await loop.run_once()
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(
            text(
                "UPDATE bm_nodes SET memory_mb = 1024, extra_specs = '{}', last_error = 'deploy failed: x' "
                "WHERE id = :id"
            ),
            {"id": poisoned},
        )
    await loop.run_once()
    assert (await nodes(cloud))[poisoned].last_error == "deploy failed: x"


async def test_a_poisoned_node_fails_alone_in_update_available_resource(cloud: Cloud) -> None:
    healthy = await cloud.enroll(3)
    poisoned = await poison_resources(cloud)
    loop = UpdateAvailableResource(cloud.ctx.driver, cloud.ctx.sessionmaker, 60, cloud.ctx.step_failures)
    await loop.run_once()
    async with cloud.ctx.sessionmaker() as session:
        written = set((await session.execute(select(ComputeNode.bm_node_id))).scalars())
    assert written == set(healthy)
    assert ((await nodes(cloud))[poisoned].last_error or "").startswith("update_available_resource: ")
    assert failures_metric(cloud, "update_available_resource") == 1


async def test_compute_node_rows_are_not_read_by_the_scheduler_refresh(cloud: Cloud) -> None:
    """compute_nodes is the resource tracker's output: even a row that cannot be read as numbers changes
    nothing in the scheduler (its used/free comes from bm_nodes)."""
    healthy = await cloud.enroll(3)
    await UpdateAvailableResource(cloud.ctx.driver, cloud.ctx.sessionmaker, 60).run_once()
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE compute_nodes SET vcpus = 'many' WHERE bm_node_id = :id"), {"id": healthy[0]}
        )
        await session.execute(update(ComputeNode).where(ComputeNode.bm_node_id == healthy[1]).values(free_ram_mb=7))
    await SchedulerRefresh(cloud.ctx.scheduler, 60).run_once()
    assert [cloud.ctx.scheduler.selector.get(str(i)).free_ram_mb for i in healthy] == [16384] * 3
    assert failures_metric(cloud, "scheduler_refresh") == 0


async def test_a_bad_capability_dict_does_not_stop_the_others(cloud: Cloud) -> None:
    healthy = await cloud.enroll(2)
    stats = [dict(s) for s in cloud.ctx.bus.latest(TOPIC)]
    stats[0]["vcpus"] = {"not": "a number"}
    stats[1]["host_memory_total"] = 123
    with capture_logs() as logs:
        cloud.ctx.scheduler.take_capabilities(stats)
        cloud.ctx.scheduler.take_capabilities(stats)
    selector = cloud.ctx.scheduler.selector
    assert selector.get(str(healthy[1])).total_usable_ram_mb == 123
    assert str(healthy[0]) in selector  # kept as it was, not dropped
    assert failures_metric(cloud, "scheduler_capabilities") == 2
    assert [e["node"] for e in logs if e["event"] == "node_capabilities_rejected"] == [str(healthy[0])]
    with capture_logs() as logs:
        cloud.ctx.scheduler.take_capabilities(cloud.ctx.bus.latest(TOPIC))
    assert [e["node"] for e in logs if e["event"] == "node_capabilities_recovered"] == [str(healthy[0])]


async def test_step_failures_metric_is_rendered(cloud: Cloud) -> None:
    page = render(cloud.ctx)
    assert "# TYPE bmd_node_step_failures_total counter" in page
    cloud.ctx.step_failures.add("sync_power_states")
    assert failures_metric(cloud, "sync_power_states") == 1


def test_node_steps_report_transitions_only() -> None:
    steps = NodeSteps("t")
    steps.start()
    steps.fail(1, ValueError("bad"))
    first = steps.finish()
    assert dict(first.failed) == {1: "t: ValueError: bad"} and not first.recovered
    steps.start()
    steps.fail(1, ValueError("bad"))
    assert not steps.finish()  # the same error again: nothing to write
    steps.start()
    steps.fail(1, ValueError("worse"))
    changed = steps.finish()
    assert dict(changed.failed) == {1: "t: ValueError: worse"}
    steps.unwritten(changed)  # the write failed: offered again
    steps.start()
    steps.fail(1, ValueError("worse"))
    assert dict(steps.finish().failed) == {1: "t: ValueError: worse"}
    steps.start()
    recovered = steps.finish()
    assert dict(recovered.recovered) == {1: "t: ValueError: worse"} and not recovered.failed
    steps.unwritten(recovered)
    steps.start()
    assert dict(steps.finish().recovered) == {1: "t: ValueError: worse"}
    assert steps.counter.totals == {"t": 4}


async def test_real_lab_bmcs_are_read_beside_poisoned_rows(tmp_path: Path, db_file: Path) -> None:
    """The same over IPMI: three simulated BMCs on loopback, and rows no API would have written."""
    fast = {"ipmi": {"timeout": 1.0, "retries": 1}, "tasks": {"power_sync_timeout": 2.0}}
    async with Lab(LabSpec(count=3)) as lab, open_context(make_settings(tmp_path, **fast)) as ctx:
        ctx.power.register("broken", BrokenPower())
        imported = [{**entry, "cpus": 8, "memory_mb": 16384, "local_gb": 200} for entry in lab.inventory()]
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            auth = {"Authorization": f"Bearer {ctx.api_token}"}
            resp = await client.post("/v1/nodes/import", json={"nodes": imported}, headers=auth)
            assert resp.status == 201, await resp.text()
        password = ctx.secret_box.encrypt("pw")
        poisoned = [
            *(await add_nodes(ctx, 1, pm_driver="ipmi", pm_address="::::", pm_user="u", pm_password=password)),
            *(await add_nodes(ctx, 1, pm_driver="broken", pm_address="h")),
        ]
        loop = SyncPowerStates(ctx.sessionmaker, ctx.power, "test-host", ctx.settings.tasks, failures=ctx.step_failures)
        await loop.run_once()
        async with ctx.sessionmaker() as session:
            rows = {n.id: n for n in (await session.execute(select(BareMetalNode))).scalars()}
        good = [n for i, n in rows.items() if i not in poisoned]
        assert len(good) == 3
        assert all(n.power_state in ("power on", "power off") and n.last_power_error is None for n in good)
        assert all(rows[i].last_power_error for i in poisoned)
        assert ctx.step_failures.totals == {"sync_power_states": 1}  # the driver bug; "::::" is a BMC-field error


async def test_a_power_check_that_reads_nothing_new_keeps_the_node_version(cloud: Cloud) -> None:
    """The version-keyed passes (report_driver_status, update_available_resource, the scheduler's resync)
    read only the nodes whose version moved: a power sync over an unchanged fleet must not move them all,
    while a power state read anew does."""
    ids = await cloud.enroll(3)
    loop = power_loop(cloud)
    await loop.run_once()  # the first reading of each node (its power state was not known)
    before = await nodes(cloud)
    cloud.fake.bmc(ids[0]).power = PowerState.ON
    await loop.run_once()
    after = await nodes(cloud)
    assert after[ids[0]].power_state == "power on" and after[ids[0]].version > before[ids[0]].version
    for node_id in ids[1:]:
        assert after[node_id].version == before[node_id].version
        assert after[node_id].last_power_check is not None
        assert after[node_id].last_power_check > before[node_id].last_power_check  # checked, stamped
