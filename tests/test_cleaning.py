"""Cleaning between tenants against the real app on 127.0.0.1 (real SQLite, fake power, the Python agent
or plain HTTP as the node): a delete frees the instance at once and the node boots the ramdisk in clean
mode (the lookup says so, nothing on the command line does), the agent's report through the same
token-checked endpoints makes it available, or puts it in maintenance when it failed or timed out."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from bmd.db.models import BareMetalNode, Deployment, PxeIp, utcnow
from bmd.db.nodes import is_free
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.provision.recovery import fail_timed_out_cleans, recover
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import MAC, Waiting, deploy_until_waiting, served_files

IPXE_LINK = "ipxe/01-" + MAC.replace(":", "-") + ".ipxe"


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path, deploy={"automated_clean": True}) as c:
        yield c


async def deploy_active(cloud: Cloud, **enroll: Any) -> Waiting:
    if enroll:
        await cloud.enroll(1, **enroll)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create()
        assert status == 202, body
        await cloud.settle()
        async with cloud.ctx.sessionmaker() as session:
            row = await session.scalar(select(BareMetalNode).where(BareMetalNode.instance_uuid.is_not(None)))
        assert row is not None and row.instance_uuid is not None
        w = Waiting(row.id, row.uuid, row.instance_uuid)
    else:
        (w,) = await deploy_until_waiting(cloud)
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "active"
    return w


async def delete(cloud: Cloud, w: Waiting) -> None:
    resp = await cloud.client.delete(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)
    assert resp.status == 202, await resp.text()
    await cloud.settle()


async def lookup(cloud: Cloud, w: Waiting) -> dict[str, Any]:
    resp = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": w.node_uuid, "mac": MAC})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def callback(cloud: Cloud, w: Waiting, token: str, error: str | None = None) -> tuple[int, Any]:
    resp = await cloud.client.post(
        f"/v1/nodes/{w.node_uuid}/vendor_passthru/pass_deploy_info",
        json={"deployment_id": "1", "address": "127.0.0.1", "error": error},
        headers={"X-Agent-Token": token},
    )
    return resp.status, await resp.json()


def http_root(cloud: Cloud) -> Path:
    return Path(cloud.ctx.settings.deploy.http_root)


async def deployment(cloud: Cloud, node_id: int) -> Deployment | None:
    async with cloud.ctx.sessionmaker() as session:
        return await session.scalar(select(Deployment).where(Deployment.bm_node_id == node_id))


async def pxe_ip_of(cloud: Cloud, node_id: int) -> str | None:
    async with cloud.ctx.sessionmaker() as session:
        return await session.scalar(select(PxeIp.address).where(PxeIp.bm_node_id == node_id))


async def test_a_delete_frees_the_instance_at_once_then_the_clean_boot_makes_the_node_available(
    cloud: Cloud,
) -> None:
    w = await deploy_active(cloud)
    calls_before = len(cloud.fake.bmc(w.node_id).calls)
    with capture_logs() as logs:
        await delete(cloud, w)
    inst = await cloud.instance(w.instance_uuid)
    node = await cloud.node(w.node_id)
    assert inst.vm_state == "deleted" and inst.deleted_at is not None  # Ironic's order: freed before cleaning
    assert node.provision_state == "cleaning" and node.instance_uuid is None and node.deploy_deadline is not None
    assert not is_free(node.instance_uuid, node.provision_state, node.maintenance)  # nobody places on it
    assert any(e["event"] == "instance_deleted" and e.get("cleaning") == "started" for e in logs)
    calls = cloud.fake.bmc(w.node_id).calls[calls_before:]
    assert calls.index("set_power_state:power off") < calls.index("set_boot_device:pxe")
    assert calls[-1] in ("set_power_state:power on", "reboot")
    # The clean boot is the deploy boot without an image: the same label, nothing says "clean" there.
    script = (http_root(cloud) / IPXE_LINK).read_text()
    assert f"bmd_node_uuid={w.node_uuid}" in script and "clean" not in script
    assert not [p for p in served_files(cloud.tftp_root, http_root(cloud)) if p.name == "disk"]
    assert await pxe_ip_of(cloud, w.node_id) is not None  # its DHCP answer needs one

    answer = await lookup(cloud, w)
    assert answer["mode"] == "clean" and answer["erase"] == "metadata"
    assert "image_url" not in answer and "config_drive_url" not in answer
    img = await cloud.client.get(f"/v1/agent/nodes/{w.node_uuid}/image", headers={"X-Agent-Token": answer["token"]})
    assert img.status == 404  # a clean boot has no image to hand out
    beat = await cloud.client.post(
        f"/v1/agent/nodes/{w.node_uuid}/heartbeat",
        json={"message": "erasing /dev/vda"},
        headers={"X-Agent-Token": answer["token"]},
    )
    assert beat.status == 202 and (await beat.json())["provision_state"] == "cleaning"
    # The report needs the boot's token, exactly as a deploy's does: a wrong one changes nothing.
    status, body = await callback(cloud, w, "not-the-token")
    assert status == 401 and "agent_token_refused" in str(body)
    assert (await cloud.node(w.node_id)).provision_state == "cleaning"

    status, body = await callback(cloud, w, answer["token"])
    assert status == 202 and body["provision_state"] == "cleaning"
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "available" and not node.maintenance and node.last_error is None
    assert is_free(node.instance_uuid, node.provision_state, node.maintenance)
    assert cloud.fake.bmc(w.node_id).calls[-1] == "set_power_state:power off"
    assert not (http_root(cloud) / IPXE_LINK).exists() and not (http_root(cloud) / w.node_uuid).exists()
    assert await deployment(cloud, w.node_id) is None and await pxe_ip_of(cloud, w.node_id) is None
    status, _ = await callback(cloud, w, answer["token"])  # the token died with the report
    assert status == 401
    steps = [s["step"] for s in node.deploy_steps or []]
    assert "clean_boot_config" in steps and "clean_callback" in steps


async def test_the_node_is_placed_again_after_its_clean(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202  # the Python agent in clean mode
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "available"
    await cloud.publish()
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "wait_callback"


async def test_an_error_reported_by_the_clean_agent_puts_the_node_in_maintenance(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    result = await run_agent(cloud.tftp_root, MAC, fail_with="dd: /dev/vda: Input/output error")
    assert result.status == 202 and '"clean failed"' in result.body
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "clean failed" and node.maintenance and node.maintenance_set_by == "bmd"
    assert node.maintenance_reason is not None and "Input/output error" in node.maintenance_reason
    assert node.last_error == node.maintenance_reason and node.instance_uuid is None
    assert not is_free(node.instance_uuid, node.provision_state, node.maintenance)
    assert cloud.fake.bmc(w.node_id).calls[-1] == "set_power_state:power off"  # powered off, its boot files gone
    assert not (http_root(cloud) / IPXE_LINK).exists() and await pxe_ip_of(cloud, w.node_id) is None
    assert (await cloud.instance(w.instance_uuid)).vm_state == "deleted"  # the tenant's side is done


async def test_a_clean_that_never_calls_back_times_out_into_maintenance(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    answer = await lookup(cloud, w)
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == w.node_id)
            .values(deploy_deadline=utcnow() - dt.timedelta(seconds=1))
        )
    assert await fail_timed_out_cleans(cloud.ctx.conductor) == 1
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "clean failed" and node.maintenance
    assert node.maintenance_reason is not None and "clean timed out" in node.maintenance_reason
    status, _ = await callback(cloud, w, answer["token"])  # too late: the token is dead
    assert status == 401
    assert await fail_timed_out_cleans(cloud.ctx.conductor) == 0


@pytest.mark.parametrize("where", ["flavor", "node"])
async def test_full_erase_is_asked_for_by_the_flavor_or_the_node(cloud: Cloud, where: str) -> None:
    if where == "flavor":
        resp = await cloud.client.put(
            "/v1/flavors/bm.small/extra_specs/bmd:clean_erase", json={"value": "full"}, headers=cloud.auth
        )
        assert resp.status in (200, 201), await resp.text()
        w = await deploy_active(cloud)
    else:
        w = await deploy_active(cloud, extra_specs={"clean_erase": "full"})
    await delete(cloud, w)
    assert (await lookup(cloud, w))["erase"] == "full"


async def test_the_text_lookup_answer_tells_the_sh_agent_to_clean(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    resp = await cloud.client.post(
        "/v1/agent/lookup", json={"node_uuid": w.node_uuid, "mac": MAC}, headers={"Accept": "text/plain"}
    )
    lines = dict(line.split("=", 1) for line in (await resp.text()).splitlines())
    assert lines["mode"] == "clean" and lines["erase"] == "metadata" and "image_url" not in lines


async def test_a_second_lookup_fails_the_clean(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    await lookup(cloud, w)
    resp = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": w.node_uuid, "mac": MAC})
    assert resp.status == 409 and "agent_token_already_issued" in await resp.text()
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "clean failed" and node.maintenance


async def test_recovery_boots_an_interrupted_clean_again_and_finishes_a_reported_one(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    # bmd stopped before it had powered the node on for its clean boot: the boot runs again.
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(update(Deployment).where(Deployment.bm_node_id == w.node_id).values(booted_at=None))
    counts = await recover(cloud.ctx.conductor)
    await cloud.settle()
    assert counts["cleans_resumed"] == 1
    dep = await deployment(cloud, w.node_id)
    assert dep is not None and dep.booted_at is not None
    assert (await cloud.node(w.node_id)).provision_state == "cleaning"
    # bmd stopped after the agent's report, before the node was tidied: the finish runs again.
    answer = await lookup(cloud, w)
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == w.node_id).values(deploy_deadline=None))
    assert answer["mode"] == "clean"
    counts = await recover(cloud.ctx.conductor)
    await cloud.settle()
    assert counts["cleans_resumed"] == 1
    assert (await cloud.node(w.node_id)).provision_state == "available"


async def test_automated_clean_off_skips_it_and_says_so(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path, deploy={"automated_clean": False}) as cloud:
        w = await deploy_active(cloud)
        with capture_logs() as logs:
            await delete(cloud, w)
        node = await cloud.node(w.node_id)
        assert node.provision_state == "available" and node.instance_uuid is None
        assert any("automated_clean is false" in str(e.get("cleaning")) for e in logs)


def test_cleaning_is_on_by_default() -> None:
    from bmd.config import DeploySettings

    assert DeploySettings().automated_clean is True and DeploySettings().clean_erase == "metadata"


async def test_an_operator_retries_a_failed_clean_and_the_node_comes_back(cloud: Cloud) -> None:
    resp = await cloud.client.put(
        "/v1/flavors/bm.small/extra_specs/bmd:clean_erase", json={"value": "full"}, headers=cloud.auth
    )
    assert resp.status in (200, 201)
    w = await deploy_active(cloud)
    await delete(cloud, w)
    await run_agent(cloud.tftp_root, MAC, fail_with="disk busy")
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "clean failed"
    resp = await cloud.client.post(f"/v1/nodes/{w.node_uuid}/clean", headers=cloud.auth)
    assert resp.status == 202, await resp.text()
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "cleaning" and not node.maintenance and node.maintenance_reason is None
    assert (await lookup(cloud, w))["erase"] == "full"  # the last tenant's flavor still counts
    resp = await cloud.client.post(f"/v1/nodes/{w.node_uuid}/clean", headers=cloud.auth)
    assert resp.status == 409  # only a node in "clean failed" is retried
    resp = await cloud.client.post(f"/v1/nodes/{w.node_uuid}/clean")
    assert resp.status == 401  # an operator's call: the bearer token is required


async def test_the_clean_boot_has_a_dhcp_entry_until_the_node_is_clean(cloud: Cloud) -> None:
    from tests.dhcp.test_dnsmasq_config import provider

    dhcp = provider(cloud.tmp / "dnsmasq")  # the dnsmasq provider's file side, not started
    dhcp.files.hosts.mkdir(parents=True)
    cloud.ctx.conductor.p.dhcp = cloud.ctx.dhcp = dhcp
    w = await deploy_active(cloud)
    assert not (dhcp.files.hosts / w.node_uuid).exists()  # an active node boots from disk: no DHCP answer
    await delete(cloud, w)
    assert MAC in (dhcp.files.hosts / w.node_uuid).read_text()  # answered for its clean boot
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "available"
    assert not (dhcp.files.hosts / w.node_uuid).exists()


def test_the_transition_table_for_cleaning() -> None:
    from bmd.errors import InvalidState
    from bmd.states import Event, ProvisionState, target

    s = ProvisionState
    assert target(Event.CLEAN, s.DELETING) is s.CLEANING
    assert target(Event.CLEAN, s.CLEAN_FAILED) is s.CLEANING  # an operator's retry
    assert target(Event.CLEAN_CALLBACK, s.CLEANING) is s.CLEANING
    assert target(Event.CLEANED, s.CLEANING) is s.AVAILABLE
    assert target(Event.CLEAN_FAIL, s.CLEANING) is s.CLEAN_FAILED
    for event, source in [
        (Event.CLEAN, s.ACTIVE),  # a node is cleaned only once its delete's teardown is done
        (Event.DEPLOY, s.CLEANING),
        (Event.DEPLOY, s.CLEAN_FAILED),
        (Event.DELETE, s.CLEANING),  # it holds no instance to delete
        (Event.CLEANED, s.CLEAN_FAILED),  # out of clean failed only by cleaning again
    ]:
        with pytest.raises(InvalidState):
            target(event, source)
