"""Instances in-process: atomic claims under concurrency, the chain's reason, the deploy flow with the
simulated agent over real HTTP, delete, and every failure path leaving nodes in a legal state."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bmd.db.models import BareMetalNode, Deployment, Interface, PxeIp, utcnow
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.drivers.power.base import BootDevice, PowerState
from tests.cloud import Cloud, make_cloud


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def count_claimed(cloud: Cloud) -> tuple[int, int]:
    async with cloud.ctx.sessionmaker() as session:
        claimed = await session.scalar(select(func.count()).where(BareMetalNode.instance_uuid.is_not(None)))
        distinct = await session.scalar(select(func.count(func.distinct(BareMetalNode.instance_uuid))))
    return int(claimed or 0), int(distinct or 0)


async def test_200_concurrent_requests_50_nodes(cloud: Cloud) -> None:
    await cloud.enroll(50)
    await cloud.add_pxe_ips(50)
    results = await asyncio.gather(*(cloud.create() for _ in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(202) == 50 and statuses.count(409) == 150
    assert all(body["error"] == "no_valid_host" for s, body in results if s == 409)
    nodes = [body["instances"][0]["bm_node_id"] for s, body in results if s == 202]
    assert len(set(nodes)) == 50  # no node twice
    await cloud.settle()
    claimed, distinct = await count_claimed(cloud)
    assert claimed == distinct == 50


async def test_no_valid_host_names_the_filter(cloud: Cloud) -> None:
    await cloud.enroll(3)
    await cloud.add_pxe_ips(1)
    await cloud.client.put(
        "/v1/flavors/bm.small/extra_specs/capabilities:cpu_arch", json={"value": "aarch64"}, headers=cloud.auth
    )
    status, body = await cloud.create()
    assert status == 409
    reason = "ComputeCapabilitiesFilter removed the last 3 hosts"
    assert body == {"error": "no_valid_host", "message": reason, "field": None}  # one error shape


async def test_multi_instance_is_all_or_nothing(cloud: Cloud) -> None:
    await cloud.enroll(2)
    await cloud.add_pxe_ips(5)
    status, body = await cloud.create(num_instances=3)
    assert status == 409, body
    assert await count_claimed(cloud) == (0, 0)
    status, body = await cloud.create(num_instances=2)
    assert status == 202 and len(body["instances"]) == 2
    assert len({i["reservation_id"] for i in body["instances"]}) == 1


async def test_schedule_is_a_dry_run(cloud: Cloud) -> None:
    await cloud.enroll(4)
    resp = await cloud.client.post("/v1/schedule", json={"flavor": "bm.small", "num_instances": 2}, headers=cloud.auth)
    body = await resp.json()
    assert resp.status == 200 and body["ok"] and len(body["candidates"]) == 2
    assert body["filter_counts"][0][0] == {"filter": "DeployReadyFilter", "before": 4, "after": 4}
    assert body["filter_counts"][0][1] == {"filter": "ComputeFilter", "before": 4, "after": 4}
    assert await count_claimed(cloud) == (0, 0)
    resp = await cloud.client.post("/v1/schedule", json={"flavor": "nope"}, headers=cloud.auth)
    assert resp.status == 400 and (await resp.json())["field"] == "flavor"


async def test_deploy_end_to_end_in_process(cloud: Cloud, tmp_path: Path) -> None:
    (node_id,) = await cloud.enroll(1, nics=2)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create(networks=[{"id": "tenant-a", "vlan": 100}])
    assert status == 202, body
    uuid = body["instances"][0]["uuid"]
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "wait_callback" and node.deploy_deadline is not None
    bmc = cloud.fake.bmc(node_id)
    assert (bmc.power == PowerState.ON and "set_boot_device:pxe:False" in " ".join(bmc.calls)) or bmc.boots >= 1

    # a callback without the agent token, or with a made-up one, is refused and changes nothing
    mac = "52:54:00:00:01:00"
    callback = f"/v1/nodes/{node.uuid}/vendor_passthru/pass_deploy_info"
    for headers in ({}, {"X-Agent-Token": "0" * 43}):
        wrong = await cloud.client.post(callback, json={"error": None}, headers=headers)
        assert wrong.status == 401 and (await wrong.json())["field"] == "X-Agent-Token"
    assert (await cloud.node(node_id)).provision_state == "wait_callback"

    result = await run_agent(cloud.tftp_root, mac, dest=tmp_path / "written.img")
    assert result.status == 202, result.body
    assert json.loads(result.body) == {"provision_state": "wait_callback"}  # answered before the finish runs
    await cloud.settle()
    written, source = tmp_path / "written.img", Path(cloud.image_ref)
    assert result.resumed and await asyncio.to_thread(written.read_bytes) == await asyncio.to_thread(source.read_bytes)
    node = await cloud.node(node_id)
    assert node.provision_state == "active" and node.instance_uuid == uuid
    assert bmc.boot.device == BootDevice.DISK and bmc.boot.persistent
    assert (await cloud.instance(uuid)).vm_state == "active"
    shown = await (await cloud.client.get(f"/v1/instances/{uuid}")).json()
    assert shown["provision_state"] == "active" and shown["network_info"][0][0] == {"id": "tenant-a", "vlan": 100}

    # the token died with the report, and an active node hands out no new one: 409 naming the state
    async with cloud.ctx.sessionmaker() as session:
        dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node_id))
        assert dep is not None and dep.agent_token_hash is None and dep.agent_token_issued_at is not None
    again = await cloud.client.post("/v1/agent/lookup", json={"node_uuid": node.uuid, "mac": mac})
    assert again.status == 409 and "is active" in (await again.json())["message"]

    resp = await cloud.client.delete(f"/v1/instances/{uuid}", headers=cloud.auth)
    assert resp.status == 202
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.instance_uuid is None
    assert bmc.power == PowerState.OFF
    async with cloud.ctx.sessionmaker() as session:
        assert (await session.execute(select(Interface.vif_uuid))).scalars().all() == [None, None]
        assert await session.scalar(select(PxeIp.bm_node_id)) is None
        assert await session.scalar(select(func.count()).select_from(Deployment)) == 0
    assert not (cloud.tftp_root / node.uuid).exists()
    assert not list((cloud.tftp_root / "pxelinux.cfg").iterdir())
    assert (await cloud.instance(uuid)).vm_state == "deleted"
    assert (await cloud.client.delete(f"/v1/instances/{uuid}", headers=cloud.auth)).status == 204  # idempotent


async def test_agent_reported_failure_goes_to_error(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    _, body = await cloud.create()
    await cloud.settle()
    result = await run_agent(cloud.tftp_root, "52:54:00:00:01:00", fail_with="disk /dev/sda not found")
    assert result.status == 202 and json.loads(result.body) == {"provision_state": "error"}
    node = await cloud.node(node_id)
    assert node.provision_state == "error" and "disk /dev/sda not found" in (node.last_error or "")
    inst = await cloud.instance(body["instances"][0]["uuid"])
    assert inst.vm_state == "error" and "disk /dev/sda not found" in (inst.last_error or "")
    # delete from error gives the node back
    assert (await cloud.client.delete(f"/v1/instances/{inst.uuid}", headers=cloud.auth)).status == 202
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "available"


async def test_no_pxe_ip_fails_the_spawn_cleanly(cloud: Cloud) -> None:
    """The API refuses a request the pool cannot serve (test_precheck.py); a request that loses the last
    address to a concurrent one — here a claim made past the API, as another scheduler would — still
    fails its spawn cleanly."""
    from bmd.db.flavors import get_flavor
    from bmd.provision.instances import InstanceRequest, claim_instances
    from bmd.provision.request import DeployRequest
    from bmd.scheduler.host_state import RequestSpec

    (node_id,) = await cloud.enroll(1)
    async with cloud.ctx.sessionmaker() as session:
        flavor = await get_flavor(session, "bm.small")
    request = InstanceRequest(
        flavor=flavor,
        spec=RequestSpec(flavor),
        deploy=DeployRequest(cloud.image_ref, image_checksum=cloud.image_checksum, root_mb=1024),
        networks=[{"id": "n1"}],
    )
    (placement,) = await claim_instances(cloud.ctx.scheduler, request)
    cloud.ctx.conductor.spawn(placement.node_id, placement.instance_uuid)
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.instance_uuid is None
    assert "no more PXE IPs" in (node.last_error or "")
    inst = await cloud.instance(placement.instance_uuid)
    assert inst.vm_state == "error" and "no more PXE IPs" in (inst.last_error or "")
    async with cloud.ctx.sessionmaker() as session:
        assert (await session.execute(select(Interface.vif_uuid))).scalars().all() == [None]


async def test_power_failure_during_spawn_undoes_everything(cloud: Cloud) -> None:
    from bmd.errors import BMCTimeout

    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    cloud.fake.inject_failure(node_id, BMCTimeout("no answer"))
    await cloud.create(networks=[{"id": "n1"}])
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and "BMCTimeout" in (node.last_error or "")
    assert not (cloud.tftp_root / node.uuid).exists()
    async with cloud.ctx.sessionmaker() as session:
        assert await session.scalar(select(PxeIp.bm_node_id)) is None
        assert await session.scalar(select(func.count()).select_from(Deployment)) == 0


async def test_deploy_timeout_goes_to_error(tmp_path: Path, db_file: Path) -> None:
    from bmd.provision.recovery import fail_timed_out_deploys

    async with make_cloud(tmp_path, deploy={"deploy_timeout": 60}) as cloud:
        (node_id,) = await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        await cloud.create()
        await cloud.settle()
        assert (await cloud.node(node_id)).provision_state == "wait_callback"
        assert await fail_timed_out_deploys(cloud.ctx.conductor) == 0  # within its deadline: keeps waiting
        async with cloud.ctx.sessionmaker.begin() as session:  # the clock moves past the deadline
            await session.execute(
                update(BareMetalNode)
                .where(BareMetalNode.id == node_id)
                .values(deploy_deadline=utcnow() - dt.timedelta(seconds=1))
            )
        assert await fail_timed_out_deploys(cloud.ctx.conductor) == 1
        node = await cloud.node(node_id)
        assert node.provision_state == "error" and "deploy timed out" in (node.last_error or "")
        late = await run_agent(cloud.tftp_root, "52:54:00:00:01:00")
        assert late.status == 409  # the node no longer waits for it


async def test_controller_down_fails_cleanly_nothing_bound(tmp_path: Path, db_file: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sections = {
        "driver": {"default_power_driver": "fake", "vif_driver": "openflow"},
        "network": {"controller_url": f"http://127.0.0.1:{port}", "controller_timeout": 0.5, "controller_retries": 0},
    }
    async with make_cloud(tmp_path, **sections) as cloud:
        (node_id,) = await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        await cloud.create(networks=[{"id": "n1", "vlan": 10}])
        await cloud.settle()
        node = await cloud.node(node_id)
        assert node.provision_state == "available" and f"127.0.0.1:{port}" in (node.last_error or "")
        async with cloud.ctx.sessionmaker() as session:
            assert (await session.execute(select(Interface.vif_uuid))).scalars().all() == [None]


async def test_recovery_releases_orphans_and_fails_interrupted_spawns(cloud: Cloud) -> None:
    from bmd.provision.recovery import recover

    ids = await cloud.enroll(3)
    await cloud.add_pxe_ips(3)
    _, body = await cloud.create()
    placed = body["instances"][0]
    orphan = next(i for i in ids if i != placed["bm_node_id"])
    await cloud.settle()
    async with cloud.ctx.sessionmaker.begin() as session:
        # a node claimed by an instance that does not exist
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == orphan)
            .values(instance_uuid="99999999-9999-9999-9999-999999999999", provision_state="active")
        )
        # a spawn cut short: the node is still deploying, its instance building
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == placed["bm_node_id"])
            .values(provision_state="deploying", deploy_deadline=None)
        )
    counts = await recover(cloud.ctx.conductor)
    await cloud.settle()
    assert counts["orphans_released"] == 1 and counts["spawns_failed"] == 1
    node = await cloud.node(orphan)
    assert node.provision_state == "available" and node.instance_uuid is None
    node = await cloud.node(placed["bm_node_id"])
    assert node.provision_state == "available" and node.instance_uuid is None
    assert "interrupted by a restart" in (node.last_error or "")
    assert (await cloud.instance(placed["uuid"])).vm_state == "error"
    assert not (cloud.tftp_root / node.uuid).exists()


async def test_instance_cli_follows_the_deploy(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_cli import machine_out, run_cli

    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    tok = cloud.ctx.api_token
    code, out, err = await run_cli(
        cloud.client,
        tok,
        "instance",
        "create",
        "--flavor",
        "bm.small",
        "--image-ref",
        cloud.image_ref,
        "--image-checksum",
        cloud.image_checksum,
        "--network",
        "tenant:42",
        "--no-wait",
        "-f",
        "json",
        capsys=capsys,
    )
    assert code == 0, err
    (created,) = machine_out(out)  # stdout is the machine output alone; the prose went to stderr
    uuid = created["uuid"]
    assert "scheduled" in err and "scheduled" not in out
    await cloud.settle()
    code, out, _ = await run_cli(cloud.client, None, "instance", "list", "-f", "json", "--long", capsys=capsys)
    (listed,) = machine_out(out)
    node = await cloud.node(node_id)
    assert code == 0 and listed["uuid"] == uuid and listed["task_state"] == "wait_callback"
    assert listed["provision_state"] == node.provision_state and listed["node_name"] == node.name  # not "-"
    code, out, _ = await run_cli(cloud.client, None, "instance", "list", capsys=capsys)
    assert code == 0 and uuid in out and node.name in out and "wait_callback" in out
    code, out, err = await run_cli(cloud.client, tok, "instance", "delete", uuid, "--poll", "0.05", capsys=capsys)
    assert code == 0 and out.endswith(f"instance {uuid} deleted\n") and "deleted" in err.splitlines()[-1]
    assert (await cloud.node(node_id)).provision_state == "available"
    code, _, err = await run_cli(
        cloud.client,
        tok,
        "instance",
        "create",
        "--flavor",
        "bm.small",
        "--image-ref",
        "x",
        "--network",
        "bad:vlan",
        capsys=capsys,
    )
    assert code == 2 and "--network" in err


async def test_a_deleted_instance_frees_its_node_for_the_scheduler_at_once(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202
    await cloud.settle()
    assert (await cloud.create())[0] == 409  # the only node is taken
    assert (
        await cloud.client.delete(f"/v1/instances/{body['instances'][0]['uuid']}", headers=cloud.auth)
    ).status == 202
    await cloud.settle()
    status, again = await cloud.create()  # no capability report in between
    assert status == 202 and again["instances"][0]["bm_node_id"] == node_id


async def until(what: str, predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``predicate`` (cheap, in-process) until it holds; fail naming ``what`` after 10 s."""
    try:
        async with asyncio.timeout(10):
            while not await predicate():  # noqa: ASYNC110 - polls in-process state another task changes
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"never: {what}")


async def test_a_node_runs_one_action_at_a_time_and_the_callback_answers_at_once(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    bmc = cloud.fake.bmc(node_id)
    power, boot = f"/v1/nodes/{node_id}/states/power", f"/v1/nodes/{node_id}/management/boot_device"

    async def held() -> bool:
        return bmc.in_flight == 1

    async def put_power() -> tuple[int, str]:
        resp = await cloud.client.put(power, json={"target": "power on"}, headers=cloud.auth)
        return resp.status, (await resp.json()).get("message", "")

    # Eight power requests at once on an idle node: one takes the node's lock, seven are told what runs.
    bmc.gate = asyncio.Event()
    calls = [asyncio.create_task(put_power()) for _ in range(8)]
    await until("seven refused", lambda: _done(calls, 7))
    await until("one at the BMC", held)
    refused = [c.result() for c in calls if c.done()]
    assert all(status == 409 and "set_power runs" in message for status, message in refused), refused
    put = await cloud.client.put(boot, json={"boot_device": "disk", "persistent": True}, headers=cloud.auth)
    assert put.status == 409 and "set_power runs" in (await put.json())["message"]
    live = await cloud.client.get(f"{boot}?live=true", headers=cloud.auth)
    assert live.status == 409 and "set_power runs" in (await live.json())["message"]
    (winner,) = [c for c in calls if not c.done()]
    bmc.gate.set()
    assert (await winner)[0] == 200 and bmc.max_in_flight == 1

    # A spawn held at the BMC: the node is deploying, its provisioning owns the BMC.
    bmc.gate = asyncio.Event()
    status, body = await cloud.create()
    assert status == 202, body
    await until("the spawn at the BMC", held)
    assert await put_power() == (409, f"node {node_id} is deploying: its provisioning owns the BMC now")
    bmc.gate.set()
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "wait_callback"

    # The callback answers 202 at once; the finish (disk boot, reboot) is the node's job, held at the BMC.
    bmc.gate = asyncio.Event()
    result = await run_agent(cloud.tftp_root, "52:54:00:00:01:00")
    assert (result.status, json.loads(result.body)) == (202, {"provision_state": "wait_callback"})
    node = await cloud.node(node_id)
    assert (node.provision_state, node.task_state, node.deploy_deadline) == ("wait_callback", "finishing_deploy", None)
    await until("the finish at the BMC", held)
    status, message = await put_power()
    assert status == 409 and "finish_deploy runs" in message
    bmc.gate.set()
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "active"
    assert (await cloud.instance(body["instances"][0]["uuid"])).vm_state == "active"
    assert (await put_power())[0] == 200  # idle again


async def _done(tasks: list[asyncio.Task[tuple[int, str]]], count: int) -> bool:
    return sum(t.done() for t in tasks) >= count


async def test_instance_cli_carries_the_config_drive_fields(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_cli import machine_out, run_cli

    await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op@example"
    (tmp_path / "keys").write_text(key + "\n\n")
    (tmp_path / "user-data").write_text("#cloud-config\nruncmd: [echo hi]\n")
    (tmp_path / "net.json").write_text('{"links": [], "networks": [], "services": []}')
    tok = cloud.ctx.api_token
    base = ["instance", "create", "--flavor", "bm.small", "--image-ref", cloud.image_ref, "--no-wait", "-f", "json"]
    code, out, err = await run_cli(
        cloud.client,
        tok,
        *base,
        "--image-checksum",
        cloud.image_checksum,
        "--hostname",
        "web-1",
        "--ssh-key-file",
        str(tmp_path / "keys"),
        "--user-data",
        str(tmp_path / "user-data"),
        "--network-data",
        str(tmp_path / "net.json"),
        "--meta",
        "role=web",
        capsys=capsys,
    )
    assert code == 0, err
    (shown,) = machine_out(out)
    await cloud.settle()
    got = await (await cloud.client.get(f"/v1/instances/{shown['uuid']}")).json()
    text = json.dumps(got)
    assert "web-1" in text and "AAAAC3NzaC1lZDI1NTE5" in text and "role" in text
    assert "runcmd" not in text  # user data is never shown
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = await run_cli(cloud.client, tok, *base, "--network-data", str(tmp_path / "bad.json"), capsys=capsys)
    assert code == 2 and "--network-data" in err
    code, _, err = await run_cli(cloud.client, tok, *base, "--user-data", str(tmp_path / "missing"), capsys=capsys)
    assert code == 2 and "--user-data" in err
