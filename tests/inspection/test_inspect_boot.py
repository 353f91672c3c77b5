"""The inspect boot against the real app on 127.0.0.1 (real SQLite, fake power, plain HTTP or the Python agent
as the node): a node enrolled with only its BMC and a MAC is booted into the ramdisk in inspect mode (the
lookup says so, the kernel command line does not), the report posted with the boot's token fills the node
and the scheduler places on it at its next pass; every failure (a ``fail`` rule, a bad report, the agent's
error, a second lookup, no report in time, a restart) ends in ``inspect failed`` with the reason, or resumes."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bmd.db.models import BareMetalNode, Deployment, Interface, PxeIp, utcnow
from bmd.drivers.deploy.agent_sim import read_boot_args, run_deploy
from bmd.lab.machines import sim_report
from bmd.provision.recovery import fail_timed_out_inspections, recover
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import served_files

MAC = "52:54:00:00:01:00"
BMC_ONLY = {
    "name": "bare-1",
    "pm_driver": "fake",
    "pm_address": "fake-1",
    "pm_user": "admin",
    "pm_password": "pw",
    "interfaces": [{"address": MAC}],
}
RULES = [
    {"if": "memory_mb < 1024", "then": "maintenance less than 1 GiB of memory"},
    {"if": "cpus > 64", "then": "fail more cpus than this rack takes"},
]


def report(**change: Any) -> dict[str, Any]:
    """What a lab machine with 16 GiB and a 200 GiB disk reports (the flavor bm.small), its NIC hearing
    switch port 12."""
    r = sim_report(11, MAC, 16384, 200 * 1024, "bios")
    r["cpu"]["count"] = 8
    return {**r, **change}


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path, inspection={"rules": RULES, "lldp_wait": 7}) as c:
        await c.add_pxe_ips(3)
        yield c


async def enroll(cloud: Cloud, **extra: Any) -> int:
    resp = await cloud.client.post("/v1/nodes", json={**BMC_ONLY, **extra}, headers=cloud.auth)
    assert resp.status == 201, await resp.text()
    node_id: int = (await resp.json())["id"]
    return node_id


async def start(cloud: Cloud, node: int | str) -> tuple[int, dict[str, Any]]:
    resp = await cloud.client.post(f"/v1/nodes/{node}/inspect", headers=cloud.auth)
    body: dict[str, Any] = await resp.json()
    if resp.status == 202:
        await cloud.settle()  # the boot job: PXE files, power on
    return resp.status, body


async def lookup(cloud: Cloud, node_uuid: str) -> tuple[int, dict[str, Any]]:
    resp = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": node_uuid, "mac": MAC})
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def post_report(cloud: Cloud, node_uuid: str, token: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = await cloud.client.post(
        f"/v1/agent/nodes/{node_uuid}/inspection", json=body, headers={"X-Agent-Token": token}
    )
    answer: dict[str, Any] = await resp.json()
    await cloud.settle()  # the finish (or the tidy-up after a failure)
    return resp.status, answer


async def row(cloud: Cloud, model: Any, node_id: int) -> Any:
    async with cloud.ctx.sessionmaker() as session:
        return await session.scalar(select(model).where(model.bm_node_id == node_id))


async def test_a_node_enrolled_with_only_its_bmc_is_inspected_and_then_scheduled(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    node = await cloud.node(node_id)
    assert (node.cpus, node.memory_mb, node.local_gb) == (0, 0, 0)
    await cloud.publish()
    status, body = await cloud.create()
    assert status == 409 and body["error"] == "no_valid_host", body  # nothing fits yet

    status, body = await start(cloud, node.name)
    assert status == 202 and body["provision_state"] == "inspecting"
    node = await cloud.node(node_id)
    assert node.provision_state == "inspecting" and node.task_state == "inspecting"
    assert node.deploy_deadline is not None
    calls = cloud.fake.bmc(node_id).calls
    assert calls.index("set_boot_device:pxe") < len(calls) - 1 and calls[-1] in ("set_power_state:power on", "reboot")
    # The inspect boot is the deploy boot without an image: nothing served says "inspect".
    files = served_files(cloud.tftp_root, Path(cloud.ctx.settings.deploy.http_root))
    assert files and not any(b"inspect" in data for data in files.values())
    assert (await row(cloud, Deployment, node_id)).booted_at is not None

    status, answer = await lookup(cloud, node.uuid)
    assert status == 200 and answer["mode"] == "inspect" and answer["lldp_wait"] == 7
    assert answer["inspection_url"].endswith(f"/v1/agent/nodes/{node.uuid}/inspection")
    assert "image_url" not in answer and "erase" not in answer
    token = answer["token"]
    status, applied = await post_report(cloud, node.uuid, "not-the-token", report())
    assert status == 401 and (await cloud.node(node_id)).provision_state == "inspecting"

    status, applied = await post_report(cloud, node.uuid, token, report())
    assert status == 200 and applied["applied"] and applied["provision_state"] == "inspecting", applied
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.task_state is None and node.deploy_deadline is None
    assert (node.cpus, node.memory_mb, node.local_gb) == (8, 16384, 200)
    assert node.extra_specs["cpu_arch"] == "x86_64" and node.inspection is not None and not node.maintenance
    iface = await row(cloud, Interface, node_id)
    assert (iface.datapath_id, iface.port_no) == (f"0x{0xB3D0000:016x}", 12)  # the LLDP the NIC heard
    assert cloud.fake.bmc(node_id).calls[-1] == "set_power_state:power off"
    assert await row(cloud, Deployment, node_id) is None and await row(cloud, PxeIp, node_id) is None
    assert not served_files(cloud.tftp_root, Path(cloud.ctx.settings.deploy.http_root)).keys() - files.keys()
    assert [s["step"] for s in node.deploy_steps or []][-2:] == ["wait_agent", "inspection_report"]
    # The token died with the report.
    again = await cloud.client.post(
        f"/v1/agent/nodes/{node.uuid}/inspection", json=report(), headers={"X-Agent-Token": token}
    )
    assert again.status == 401

    await cloud.publish()  # the next pass: the scheduler sees what inspection found
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    assert (await cloud.node(node_id)).instance_uuid == body["instances"][0]["uuid"]


async def test_the_python_agent_inspects_as_the_lab_machines_do(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    await start(cloud, node_id)
    boot = read_boot_args(cloud.tftp_root, MAC)
    result = await run_deploy(boot, MAC, report=report())
    assert (result.status, result.stage, result.error) == (200, "inspect", None), result
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "available"
    # A machine with nothing to report fails its inspection through the callback, with the reason.
    await start(cloud, node_id)
    result = await run_deploy(read_boot_args(cloud.tftp_root, MAC), MAC, report=None)
    assert result.status == 202 and result.error is not None
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed" and "no inspection data" in (node.last_error or "")


async def test_a_fail_rule_fails_the_inspection_keeps_the_report_and_a_retry_inspects_again(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    await start(cloud, node_id)
    node = await cloud.node(node_id)
    _, answer = await lookup(cloud, node.uuid)
    huge = report(cpu={"count": 128, "arch": "x86_64", "model": "big"})
    status, applied = await post_report(cloud, node.uuid, answer["token"], huge)
    assert status == 200 and applied["provision_state"] == "inspect failed" and not applied["applied"]
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed"
    assert node.last_error == "inspection failed: more cpus than this rack takes"
    assert node.cpus == 0 and node.inspection is not None and node.inspection["cpu"]["count"] == 128
    assert cloud.fake.bmc(node_id).calls[-1] == "set_power_state:power off"
    assert (await row(cloud, PxeIp, node_id)) is None

    status, _ = await start(cloud, node_id)  # the operator's retry, from inspect failed
    assert status == 202
    node = await cloud.node(node_id)
    assert node.provision_state == "inspecting" and node.last_error is None
    _, answer = await lookup(cloud, node.uuid)
    small = report(memory={"total_mib": 480, "physical_mib": 512})
    status, applied = await post_report(cloud, node.uuid, answer["token"], small)
    assert status == 200 and applied["applied"]
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.memory_mb == 512
    assert node.maintenance and node.maintenance_reason == "less than 1 GiB of memory"


async def test_a_report_bmd_cannot_apply_fails_the_inspection_and_writes_nothing_of_it(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    await start(cloud, node_id)
    node = await cloud.node(node_id)
    _, answer = await lookup(cloud, node.uuid)
    bad = report(cpu={"count": 0, "arch": "x86_64"})
    status, applied = await post_report(cloud, node.uuid, answer["token"], bad)
    assert status == 200 and applied["provision_state"] == "inspect failed"
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed" and "cpu.count" in (node.last_error or "")
    assert node.inspection is None and node.cpus == 0

    # A MAC that belongs to another node: refused whole, the other node untouched.
    other = await enroll(cloud, name="bare-2", pm_address="fake-2", interfaces=[{"address": "52:54:00:00:02:00"}])
    await start(cloud, node_id)
    _, answer = await lookup(cloud, node.uuid)
    stolen = report()
    stolen["nics"] = [*stolen["nics"], {**stolen["nics"][0], "name": "eth1", "mac": "52:54:00:00:02:00"}]
    status, applied = await post_report(cloud, node.uuid, answer["token"], stolen)
    assert status == 200 and applied["provision_state"] == "inspect failed"
    node = await cloud.node(node_id)
    assert "belongs to node" in (node.last_error or "") and node.inspection is None
    assert (await row(cloud, Interface, other)).bm_node_id == other


async def test_the_agents_error_a_second_lookup_and_silence_each_fail_the_inspection(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    await start(cloud, node_id)
    node = await cloud.node(node_id)
    _, answer = await lookup(cloud, node.uuid)
    resp = await cloud.client.post(
        f"/v1/nodes/{node.uuid}/vendor_passthru/pass_deploy_info",
        json={"deployment_id": answer["deployment_id"], "address": "127.0.0.1", "error": "collector died",
              "console": "bmd-agent: ERROR: collector died\n"},
        headers={"X-Agent-Token": answer["token"]},
    )  # fmt: skip
    assert resp.status == 202 and (await resp.json())["provision_state"] == "inspect failed"
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed" and "collector died" in (node.last_error or "")
    assert cloud.ctx.console_logs is not None
    assert "collector died" in cloud.ctx.console_logs.read(node.uuid).decode()

    await start(cloud, node_id)
    status, _ = await lookup(cloud, node.uuid)
    assert status == 200
    status, body = await lookup(cloud, node.uuid)
    assert status == 409 and body["error"] == "agent_token_already_issued"
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed" and "second agent token lookup" in (node.last_error or "")

    await start(cloud, node_id)
    async with cloud.ctx.sessionmaker.begin() as session:  # the agent never reports
        past = utcnow() - dt.timedelta(seconds=1)
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == node_id).values(deploy_deadline=past))
    assert await fail_timed_out_inspections(cloud.ctx.conductor) == 1
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "inspect failed" and "inspect timed out" in (node.last_error or "")
    assert cloud.fake.bmc(node_id).calls[-1] == "set_power_state:power off"
    status, _ = await lookup(cloud, node.uuid)
    assert status == 409  # no boot waits for an agent any more


async def test_what_may_not_be_inspected_is_refused_and_a_node_inspecting_cannot_be_deleted(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    status, body = await start(cloud, 9999)
    assert status == 404
    no_mac = await enroll(cloud, name="bare-2", pm_address="fake-2", interfaces=[])
    status, body = await start(cloud, no_mac)
    assert status == 409 and "has no interface" in body["message"]
    await start(cloud, node_id)
    status, body = await start(cloud, node_id)
    assert status == 409 and "inspecting" in body["message"]
    resp = await cloud.client.delete(f"/v1/nodes/{node_id}", headers=cloud.auth)
    assert resp.status == 409 and "inspecting" in (await resp.json())["message"]
    # A deploy's token cannot post an inspection report.
    await cloud.enroll(1, start=3)
    status, created = await cloud.create()
    assert status == 202, created
    await cloud.settle()
    async with cloud.ctx.sessionmaker() as session:
        deployed = await session.scalar(select(BareMetalNode).where(BareMetalNode.instance_uuid.is_not(None)))
    assert deployed is not None
    status, body = await start(cloud, deployed.id)
    assert status == 409
    resp = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": deployed.uuid})
    token = (await resp.json())["token"]
    status, body = await post_report(cloud, deployed.uuid, token, report())
    assert status == 409 and (await cloud.node(deployed.id)).provision_state == "wait_callback"


async def test_on_enroll_every_new_node_with_a_bmc_is_inspected(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path, inspection={"on_enroll": True}) as cloud:
        await cloud.add_pxe_ips(2)
        node_id = await enroll(cloud)
        await cloud.settle()
        node = await cloud.node(node_id)
        assert node.provision_state == "inspecting"
        assert "set_boot_device:pxe" in cloud.fake.bmc(node_id).calls
        resp = await cloud.client.post(
            "/v1/nodes/import",
            json={"nodes": [{**BMC_ONLY, "name": "bare-2", "pm_address": "fake-2",
                             "interfaces": [{"address": "52:54:00:00:02:00"}]}]},
            headers=cloud.auth,
        )  # fmt: skip
        assert resp.status == 201 and (await resp.json())["inspecting"] == 1
        await cloud.settle()
        (imported,) = (await resp.json())["nodes"]
        assert (await cloud.node(imported["id"])).provision_state == "inspecting"


async def test_a_restart_resumes_an_inspection_where_it_stopped(cloud: Cloud) -> None:
    node_id = await enroll(cloud)
    await start(cloud, node_id)
    node = await cloud.node(node_id)
    _, answer = await lookup(cloud, node.uuid)
    # bmd stopped after the report was stored (the deadline is gone) but before the finish ran.
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == node_id).values(deploy_deadline=None))
    counts = await recover(cloud.ctx.conductor)
    assert counts["inspections_resumed"] == 1
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "available"

    # bmd stopped in the middle of the boot (before power-on was recorded): the boot runs again.
    await start(cloud, node_id)
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(update(Deployment).where(Deployment.bm_node_id == node_id).values(booted_at=None))
    calls = len(cloud.fake.bmc(node_id).calls)
    counts = await recover(cloud.ctx.conductor)
    assert counts["inspections_resumed"] == 1
    await cloud.settle()
    assert "set_boot_device:pxe" in cloud.fake.bmc(node_id).calls[calls:]
    assert (await row(cloud, Deployment, node_id)).booted_at is not None
    status, answer = await lookup(cloud, node.uuid)
    assert status == 200 and answer["mode"] == "inspect"
