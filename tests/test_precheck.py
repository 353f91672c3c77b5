"""Validate before you claim: what the request alone decides is a 400 naming the field before scheduling; what
depends on a node is part of selection (DeployReadyFilter), so a node that cannot deploy is skipped and
counted, never claimed; no free PXE address is a 409 before any claim. And the PXE pool refuses an entry
that is its own server, or an IPv4-mapped duplicate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from bmd.db.models import BareMetalNode, Instance, Interface, PxeIp
from tests.cloud import Cloud, make_cloud


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def snapshot(cloud: Cloud) -> tuple[int, list[tuple[Any, ...]]]:
    """Instance rows, and every node's claim-related columns."""
    async with cloud.ctx.sessionmaker() as session:
        instances = int(await session.scalar(select(func.count(Instance.id))) or 0)
        nodes = (
            await session.execute(
                select(
                    BareMetalNode.id,
                    BareMetalNode.instance_uuid,
                    BareMetalNode.provision_state,
                    BareMetalNode.task_state,
                    BareMetalNode.last_error,
                ).order_by(BareMetalNode.id)
            )
        ).all()
    return instances, [tuple(n) for n in nodes]


async def schedule(cloud: Cloud, **extra: Any) -> dict[str, Any]:
    resp = await cloud.client.post("/v1/schedule", json={"flavor": "bm.small", **extra}, headers=cloud.auth)
    assert resp.status == 200
    return dict(await resp.json())


def outside(cloud: Cloud) -> Path:
    path = cloud.tmp / "elsewhere.img"
    path.write_bytes(b"x")
    return path


# (request change, the field the 400 names); callables get the cloud for paths of their own
REFUSED = [
    pytest.param(lambda c: {"image_ref": str(outside(c))}, "image_ref", id="image-outside-allowed-roots"),
    pytest.param(lambda c: {"image_ref": "/etc/passwd"}, "image_ref", id="daemon-file"),
    pytest.param(lambda c: {"image_ref": "ftp://mirror/disk.img"}, "image_ref", id="unsupported-scheme"),
    pytest.param(lambda c: {"image_ref": "file://otherhost/x.img"}, "image_ref", id="remote-file-url"),
    pytest.param(lambda c: {"image_ref": "disk.img"}, "image_ref", id="relative-path"),
    pytest.param(lambda c: {"image_ref": "https:///x"}, "image_ref", id="url-without-host"),
    pytest.param(lambda c: {"image_checksum": "sha256:abc"}, "image_checksum", id="checksum-too-short"),
    pytest.param(lambda c: {"image_checksum": "sha1:" + "a" * 40}, "image_checksum", id="unknown-algorithm"),
    pytest.param(lambda c: {"kernel_ref": str(outside(c))}, "kernel_ref", id="kernel-outside-roots"),
    pytest.param(lambda c: {"ramdisk_ref": "gopher://x/r"}, "ramdisk_ref", id="ramdisk-scheme"),
    pytest.param(lambda c: {"kernel_checksum": "md5:" + "z" * 32}, "kernel_checksum", id="kernel-checksum-not-hex"),
    pytest.param(lambda c: {"ramdisk_checksum": "sha512:00"}, "ramdisk_checksum", id="ramdisk-checksum-length"),
]


@pytest.mark.parametrize(("change", "field"), REFUSED)
async def test_a_request_that_can_never_deploy_is_400_and_claims_nothing(cloud: Cloud, change: Any, field: str) -> None:
    await cloud.enroll(2)
    await cloud.add_pxe_ips(2)
    before = await snapshot(cloud)
    status, body = await cloud.create(**change(cloud))
    assert status == 400, body
    assert body["field"] == field and body["error"] == "invalid_input"
    assert await snapshot(cloud) == before
    assert (await schedule(cloud))["ok"]  # and the scheduler still offers every node


async def test_a_symlink_out_of_the_allowed_root_is_refused(cloud: Cloud) -> None:
    await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    link = Path(cloud.image_ref).parent / "escape.img"
    link.symlink_to(outside(cloud))
    before = await snapshot(cloud)
    status, body = await cloud.create(image_ref=str(link))
    assert status == 400 and body["field"] == "image_ref"
    assert await snapshot(cloud) == before


@pytest.mark.parametrize(
    ("unset", "field"),
    [
        ("deploy_kernel", "deploy_kernel_ref"),
        ("deploy_ramdisk", "deploy_ramdisk_ref"),
        ("boot_kernel", "kernel_ref"),
        ("boot_ramdisk", "ramdisk_ref"),
    ],
)
async def test_an_image_neither_given_nor_configured_is_400(
    tmp_path: Path, db_file: Path, unset: str, field: str
) -> None:
    async with make_cloud(tmp_path, deploy={unset: ""}) as cloud:
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        before = await snapshot(cloud)
        status, body = await cloud.create()
        assert status == 400 and body["field"] == field, body
        assert await snapshot(cloud) == before
        if field in ("kernel_ref", "ramdisk_ref"):  # the request may bring its own
            images = Path(cloud.image_ref).parent
            status, body = await cloud.create(**{field: str(images / field.removesuffix("_ref"))})
            assert status == 202, body


async def test_a_node_without_an_interface_is_skipped_for_the_next(cloud: Cloud) -> None:
    (bare,) = await cloud.enroll(1, nics=0)  # first in tie order: it would be picked without the filter
    (wired,) = await cloud.enroll(1, start=2)
    await cloud.add_pxe_ips(2)
    sel = await schedule(cloud)
    assert sel["filter_counts"][0][0] == {"filter": "DeployReadyFilter", "before": 2, "after": 1}
    assert [c["node"] for c in sel["candidates"][0]] == [str(wired)]
    status, body = await cloud.create()
    assert status == 202 and body["instances"][0]["bm_node_id"] == wired
    bare_node = await cloud.node(bare)
    assert bare_node.instance_uuid is None and bare_node.provision_state == "available"
    assert (await cloud.client.get("/v1/pxe_ips", headers=cloud.auth)).status == 200


async def test_only_nodes_that_cannot_deploy_is_no_valid_host_naming_the_filter(cloud: Cloud) -> None:
    await cloud.enroll(2, nics=0)
    await cloud.add_pxe_ips(2)
    before = await snapshot(cloud)
    status, body = await cloud.create()
    assert status == 409 and body["error"] == "no_valid_host"
    assert body["message"] == "DeployReadyFilter removed the last 2 hosts"
    assert await snapshot(cloud) == before


async def test_a_node_whose_bmc_fields_its_driver_refuses_is_skipped(cloud: Cloud) -> None:
    bad, good = await cloud.enroll(2)
    async with cloud.ctx.sessionmaker.begin() as session:  # past the API's validation
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == bad).values(pm_driver="ipmi", pm_address="::::")
        )
    await cloud.publish()
    await cloud.add_pxe_ips(1)
    assert cloud.ctx.scheduler.selector.get(str(bad)).deploy_blocker.startswith("power: pm_address")
    status, body = await cloud.create()
    assert status == 202 and body["instances"][0]["bm_node_id"] == good


async def test_adding_an_interface_makes_the_node_ready_at_the_next_report(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1, nics=0)
    assert not (await schedule(cloud))["ok"]
    resp = await cloud.client.post(
        f"/v1/nodes/{node_id}/interfaces", json={"address": "52:54:00:aa:bb:cc"}, headers=cloud.auth
    )
    assert resp.status == 201
    await cloud.publish()
    assert (await schedule(cloud))["ok"]


@pytest.mark.parametrize(("ips", "num"), [(0, 1), (1, 2)])
async def test_no_pxe_ip_left_is_409_before_any_claim(cloud: Cloud, ips: int, num: int) -> None:
    await cloud.enroll(2)
    await cloud.add_pxe_ips(ips)
    before = await snapshot(cloud)
    status, body = await cloud.create(num_instances=num)
    assert status == 409 and body["error"] == "no_pxe_ip", body
    assert "PXE IP" in body["message"]
    assert await snapshot(cloud) == before
    async with cloud.ctx.sessionmaker() as session:
        assert (await session.execute(select(PxeIp.bm_node_id))).scalars().all() == [None] * ips


async def pxe(cloud: Cloud, address: str, server: str) -> tuple[int, dict[str, Any]]:
    resp = await cloud.client.post(
        "/v1/pxe_ips", json={"address": address, "server_address": server}, headers=cloud.auth
    )
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("10.0.0.1", "::ffff:10.0.0.1"),
        ("fd00::1", "fd00:0::1"),
    ],
)
async def test_a_pxe_entry_that_is_its_own_server_is_refused(cloud: Cloud, address: str, server: str) -> None:
    status, body = await pxe(cloud, address, server)
    assert status == 400 and body["field"] == "server_address", body
    assert (await (await cloud.client.get("/v1/pxe_ips", headers=cloud.auth)).json())["pxe_ips"] == []


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.0.0.1", "::ffff:10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("10.0.0.1", "::FFFF:a00:1")],
)
async def test_an_ipv4_mapped_address_is_the_ipv4_address(cloud: Cloud, first: str, second: str) -> None:
    status, body = await pxe(cloud, first, "10.1.0.1")
    assert status == 201 and body["address"] == "10.0.0.1"  # stored canonical
    status, body = await pxe(cloud, second, "10.1.0.2")
    assert status == 409, body
    rows = (await (await cloud.client.get("/v1/pxe_ips", headers=cloud.auth)).json())["pxe_ips"]
    assert [r["address"] for r in rows] == ["10.0.0.1"]


async def test_the_deploy_interface_names_why_a_node_is_skipped(cloud: Cloud) -> None:
    (bare,) = await cloud.enroll(1, nics=0)
    assert cloud.ctx.scheduler.selector.get(str(bare)).deploy_blocker == "deploy: no interface: PXE boot needs a MAC"


async def test_the_spawn_runs_the_same_validate_before_it_acts(cloud: Cloud) -> None:
    """A node that changed after the scheduler last saw it (its NIC removed behind bmd's back) is refused by
    its driver's validate at spawn, before any VIF, PXE address, boot file or power action."""
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    async with cloud.ctx.sessionmaker.begin() as session:
        await session.execute(delete(Interface).where(Interface.bm_node_id == node_id))
    status, body = await cloud.create()
    assert status == 202, body  # the scheduler's view was still the old one
    await cloud.settle()
    node = await cloud.node(node_id)
    assert node.provision_state == "available" and node.instance_uuid is None
    assert node.last_error is not None and "no interface: PXE boot needs a MAC" in node.last_error
    assert cloud.fake.bmc(node_id).calls == []  # no power action was taken
    async with cloud.ctx.sessionmaker() as session:
        assert (await session.execute(select(PxeIp.bm_node_id))).scalars().all() == [None]
    assert not list(cloud.tftp_root.glob("*/*"))  # no boot file was written
