"""The real sh deploy agent (``bmd/agent/bmd-agent.sh``) under busybox sh on the host, against a real bmd
with a node in ``wait_callback``: its disks are regular files, its sysfs a directory tree."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from bmd.db.models import Deployment
from tests.agent.machine import AGENT_DIR, CutProxy, Disk, Machine, busybox_or_skip
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import MAC, Waiting, deploy_until_waiting, served_files


@pytest.fixture
def busybox() -> str:
    return busybox_or_skip()


def url_of(cloud: Cloud) -> str:
    return str(cloud.client.make_url("")).rstrip("/")


def image_of(cloud: Cloud) -> bytes:
    return Path(cloud.image_ref).read_bytes()


async def image_path(cloud: Cloud, w: Waiting) -> Path:
    async with cloud.ctx.sessionmaker() as session:
        dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == w.node_id))
    assert dep is not None and dep.image_path
    return Path(dep.image_path)


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def test_the_agent_writes_the_image_and_the_node_goes_active(cloud: Cloud, busybox: str) -> None:
    (w,) = await deploy_until_waiting(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    machine.add_disk(Disk("vda", 10))
    with capture_logs() as logs:
        status = await machine.run(url_of(cloud), w.node_uuid, MAC)
    assert status == 0, machine.output
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "active", node.last_error
    assert machine.disk("vda") == image_of(cloud)  # exactly the image (it is longer than what was there)
    beats = [e["message"] for e in logs if e["event"] == "agent_heartbeat"]
    assert any("downloading the image" in b for b in beats) and any("image written to" in b for b in beats)
    assert "calling back" in beats[-1]
    # The token: only ever in wget's arguments; not printed, not left in a file, not in what bmd serves.
    (token,) = machine.tokens_in_argv()
    assert len(token) >= 32
    assert token not in machine.output
    assert not [
        p for p in machine.root.rglob("*") if p.is_file() and p != machine.argv_log and token.encode() in p.read_bytes()
    ]
    served = served_files(cloud.tftp_root, Path(cloud.ctx.settings.deploy.http_root))
    assert not [p for p, data in served.items() if token.encode() in data]
    assert token not in (machine.root / "cmdline").read_text()


async def test_a_checksum_mismatch_fails_the_deploy_with_the_agents_message_and_console(
    cloud: Cloud, busybox: str
) -> None:
    (w,) = await deploy_until_waiting(cloud)
    served = await image_path(cloud, w)
    corrupt = bytearray(served.read_bytes())
    corrupt[1000] ^= 0xFF
    tmp = served.with_name("corrupt")
    tmp.write_bytes(corrupt)
    os.replace(tmp, served)  # a new file: the cache's copy stays good
    machine = Machine(cloud.tmp / "machine", busybox)
    machine.add_disk(Disk("vda", 10))
    assert await machine.run(url_of(cloud), w.node_uuid, MAC) == 1
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "error"
    assert "deploy failed on the node: image checksum mismatch: expected sha256:" in (node.last_error or "")
    console = cloud.ctx.console_logs.read(w.node_uuid).decode()
    assert "bmd-agent: ERROR: image checksum mismatch" in console and "bmd-agent: starting" in console
    assert machine.disk("vda") == b"\xee" * 4096  # nothing was written
    assert (await cloud.client.delete(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)).status == 202
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "available"


DISKS = [
    Disk("loop0", 20),
    Disk("ram0", 20),
    Disk("sda", 10, model="SLOW DISK", vendor="ACME", serial="S-A", wwn="naa.5000c500a0000001"),
    Disk("sdb", 20, model="FAST DISK", vendor="ACME", serial="S-B", wwn="naa.5000c500a0000002"),
    Disk("sdc", 20, model="FAST DISK", vendor="Other", serial="S-C", wwn="naa.5000c500a0000003"),
    Disk("sdd", 20, model="SATA DISK", vendor="ATA", vpd_serial="WD-WCC4N0123456"),  # no sysfs serial
    Disk("sr0", 20),
]


@pytest.mark.parametrize(
    ("hints", "chosen"),
    [
        ({}, "sda"),  # no hints: the first disk (loop, ram and sr devices are no disks)
        ({"size": 20}, "sdb"),
        ({"size": 20, "serial": "S-C"}, "sdc"),
        ({"serial": "WD-WCC4N0123456"}, "sdd"),  # the serial only in the VPD page 0x80, as inspection reads it
        ({"model": "fast disk", "vendor": "other"}, "sdc"),
        ({"wwn": "naa.5000c500a0000002"}, "sdb"),
        ({"name": "/dev/sdc"}, "sdc"),
    ],
)
async def test_root_device_hints_choose_the_disk(
    tmp_path: Path, db_file: Path, busybox: str, hints: dict[str, Any], chosen: str
) -> None:
    async with make_cloud(tmp_path) as cloud:
        ids = await cloud.enroll(1, root_device=hints)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create()
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(ids[0])
        assert node.provision_state == "wait_callback", node.last_error
        machine = Machine(tmp_path / "machine", busybox)
        for disk in DISKS:
            machine.add_disk(disk)
        assert await machine.run(url_of(cloud), node.uuid, MAC) == 0, machine.output
        for disk in DISKS:
            expected = image_of(cloud) if disk.name == chosen else b"\xee" * 4096
            assert machine.disk(disk.name) == expected, disk.name


async def test_no_disk_matching_the_hints_is_the_agents_error(tmp_path: Path, db_file: Path, busybox: str) -> None:
    async with make_cloud(tmp_path) as cloud:
        ids = await cloud.enroll(1, root_device={"serial": "NOPE"})
        await cloud.add_pxe_ips(1)
        assert (await cloud.create())[0] == 202
        await cloud.settle()
        node = await cloud.node(ids[0])
        machine = Machine(tmp_path / "machine", busybox)
        machine.add_disk(DISKS[2])
        assert await machine.run(url_of(cloud), node.uuid, MAC) == 1
        node = await cloud.node(ids[0])
        assert node.provision_state == "error"
        assert "no disk matches the root device hints (size='' model='' vendor='' serial='NOPE'" in (
            node.last_error or ""
        )
        assert "sda(10GiB model='SLOW DISK'" in (node.last_error or "")


async def test_a_download_cut_mid_way_is_resumed(tmp_path: Path, db_file: Path, busybox: str) -> None:
    proxy = CutProxy(cut_at=100_000)
    port = await proxy.start()
    try:
        async with make_cloud(tmp_path, api={"public_url": f"http://127.0.0.1:{port}"}) as cloud:
            proxy.upstream = ("127.0.0.1", cloud.client.port)
            (w,) = await deploy_until_waiting(cloud)
            machine = Machine(tmp_path / "machine", busybox)
            machine.add_disk(Disk("vda", 10))
            assert await machine.run(f"http://127.0.0.1:{port}", w.node_uuid, MAC) == 0, machine.output
            await cloud.settle()
            assert (await cloud.node(w.node_id)).provision_state == "active"
            assert machine.disk("vda") == image_of(cloud)
            images = [(line, rng) for line, rng in proxy.requests if "/image" in line]
            assert proxy.cuts == 1 and len(images) == 2 and images[0][1] is None
            assert images[1][1] is not None and images[1][1].startswith("bytes=")
            assert 0 < int(images[1][1].removeprefix("bytes=").rstrip("-")) < len(image_of(cloud))
            assert "resuming the download at byte" in machine.output
    finally:
        await proxy.close()


@pytest.mark.parametrize("with_lib", [True, False], ids=["configdrive.sh", "no configdrive.sh"])
async def test_the_config_drive_hook(tmp_path: Path, db_file: Path, busybox: str, with_lib: bool) -> None:
    """When the lookup names a config drive (helper ``boot`` adds ``config_drive_url``; a proxy adds it
    here), the agent downloads it and calls ``bmd_configdrive_write <disk> <iso>`` from configdrive.sh."""
    proxy = CutProxy()
    port = await proxy.start()
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("bmd-agent.sh", "inspect.sh", "udhcpc.script"):
        shutil.copy(AGENT_DIR / name, lib / name)
    if with_lib:
        (lib / "configdrive.sh").write_text(
            'bmd_configdrive_write() { printf "%s %s" "$1" "$(wc -c < "$2")" > "$BMD_AGENT_WORK/cd-written"; }\n'
        )
    try:
        async with make_cloud(tmp_path, api={"public_url": f"http://127.0.0.1:{port}"}) as cloud:
            proxy.upstream = ("127.0.0.1", cloud.client.port)
            (w,) = await deploy_until_waiting(cloud)
            # any token-protected GET will do as the config drive: the image itself
            proxy.lookup_extra = (
                f"config_drive_url=http://127.0.0.1:{port}/v1/agent/nodes/{w.node_uuid}/image\n".encode()
            )
            machine = Machine(tmp_path / "machine", busybox, lib=lib)
            dev = machine.add_disk(Disk("vda", 10))
            status = await machine.run(f"http://127.0.0.1:{port}", w.node_uuid, MAC)
            await cloud.settle()
            node = await cloud.node(w.node_id)
            if with_lib:
                assert status == 0, machine.output
                assert (machine.work / "cd-written").read_text() == f"{dev} {len(image_of(cloud))}"
                assert node.provision_state == "active"
            else:
                assert status == 1
                assert node.provision_state == "error"
                assert f"a config drive was requested but {lib}/configdrive.sh is missing" in (node.last_error or "")
    finally:
        await proxy.close()


async def test_a_ramdisk_without_inspect_sh_fails_before_the_download(
    tmp_path: Path, cloud: Cloud, busybox: str
) -> None:
    """The agent reads disks with inspect.sh's bmd_disk_serial: without the file it says so, downloads nothing."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("bmd-agent.sh", "udhcpc.script"):
        shutil.copy(AGENT_DIR / name, lib / name)
    (w,) = await deploy_until_waiting(cloud)
    machine = Machine(cloud.tmp / "machine", busybox, lib=lib)
    machine.add_disk(Disk("vda", 10))
    assert await machine.run(url_of(cloud), w.node_uuid, MAC) == 1
    node = await cloud.node(w.node_id)
    assert node.provision_state == "error"
    assert f"the root device hints need {lib}/inspect.sh, which is missing" in (node.last_error or "")
    assert not (machine.work / "image").exists() and machine.disk("vda") == b"\xee" * 4096


async def test_an_image_larger_than_the_nodes_memory_is_refused_before_the_download(cloud: Cloud, busybox: str) -> None:
    (w,) = await deploy_until_waiting(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    machine.add_disk(Disk("vda", 10))
    meminfo = machine.root / "meminfo"
    meminfo.write_text("MemTotal:          65536 kB\nMemFree:           30000 kB\nMemAvailable:      30000 kB\n")
    assert await machine.run(url_of(cloud), w.node_uuid, MAC, BMD_AGENT_MEMINFO=str(meminfo)) == 1
    node = await cloud.node(w.node_id)
    assert node.provision_state == "error"
    assert "does not fit in this node's memory (30000 KiB available" in (node.last_error or "")
    assert not (machine.work / "image").exists()


async def test_a_refused_lookup_is_not_repeated(cloud: Cloud, busybox: str) -> None:
    (node_id,) = await cloud.enroll(1)  # no deploy: bmd refuses the lookup (409)
    node = await cloud.node(node_id)
    machine = Machine(cloud.tmp / "machine", busybox)
    machine.add_disk(Disk("vda", 10))
    assert await machine.run(url_of(cloud), node.uuid, MAC) == 1
    assert "bmd refused the lookup: wget: server returned error: HTTP/1.1 409" in machine.output
    lookups = [a for a in machine.argv_log.read_text().splitlines() if a.endswith("/v1/agent/lookup")]
    assert len(lookups) == 1 and machine.tokens_in_argv() == set()
    assert (await cloud.node(node_id)).provision_state == "available"
