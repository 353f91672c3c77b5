"""The real sh agent (``bmd/agent/bmd-agent.sh`` + ``clean.sh``) under busybox sh on the host, booted for
a clean after a delete against a real bmd: its disks are regular files holding a real GPT (written by
``sfdisk``), a filesystem signature and data; its sysfs a directory tree."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bmd.drivers.deploy.agent_sim import run_agent
from tests.agent.machine import Disk, Machine, busybox_or_skip
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import MAC, Waiting, deploy_until_waiting

MIB = 1 << 20
DISK_BYTES = 16 * MIB
PART_START = 2048  # sectors: the partition starts at 1 MiB
PART_SECTORS = 12 * 2048  # 12 MiB
EXT_MAGIC_AT = PART_START * 512 + 1080  # where ext2/3/4 keep their superblock magic 0xEF53
DATA = bytes(range(1, 256)) * 4  # no zero byte in it


@pytest.fixture
def busybox() -> str:
    return busybox_or_skip()


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path, deploy={"automated_clean": True}) as c:
        yield c


def url_of(cloud: Cloud) -> str:
    return str(cloud.client.make_url("")).rstrip("/")


async def cleaning(cloud: Cloud) -> Waiting:
    """A node deployed (by the Python agent) and its instance deleted: it waits for its clean agent."""
    (w,) = await deploy_until_waiting(cloud)
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202
    await cloud.settle()
    resp = await cloud.client.delete(f"/v1/instances/{w.instance_uuid}", headers=cloud.auth)
    assert resp.status == 202
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "cleaning"
    return w


def tenant_disk(machine: Machine, name: str) -> Path:
    """A 16 MiB disk as a tenant leaves it: data everywhere, a GPT (and its backup at the end), one
    partition with an ext4 magic at its superblock; sysfs lists the disk and the partition."""
    dev = machine.add_disk(Disk(name, 1))
    dev.write_bytes(DATA * (DISK_BYTES // len(DATA)) + DATA[: DISK_BYTES % len(DATA)])
    block = machine.root / "sys" / "block" / name
    (block / "size").write_text(f"{DISK_BYTES // 512}\n")
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        pytest.skip("sfdisk is not installed (Debian package fdisk)")
    layout = f"label: gpt\nstart={PART_START}, size={PART_SECTORS}, type=L\n"
    subprocess.run([sfdisk, "-q", str(dev)], input=layout.encode(), check=True, capture_output=True)
    with dev.open("r+b") as f:
        f.seek(EXT_MAGIC_AT)
        f.write(b"\x53\xef")
    part = block / f"{name}1"
    part.mkdir()
    (part / "start").write_text(f"{PART_START}\n")
    (part / "size").write_text(f"{PART_SECTORS}\n")
    data = dev.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[512:520] == b"EFI PART"  # protective MBR, GPT header
    assert data[-512:-504] == b"EFI PART"  # the backup GPT header in the last sector
    return dev


def has_table(dev: Path) -> bool:
    out = subprocess.run(["sfdisk", "--dump", str(dev)], capture_output=True, text=True)
    return out.returncode == 0 and "start=" in out.stdout


async def test_a_metadata_clean_zeroes_both_ends_of_the_disk_and_of_its_partitions(cloud: Cloud, busybox: str) -> None:
    w = await cleaning(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    dev = tenant_disk(machine, "vda")
    assert has_table(dev)
    status = await machine.run(url_of(cloud), w.node_uuid, MAC)
    assert status == 0, machine.output
    data = dev.read_bytes()
    assert len(data) == DISK_BYTES
    assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)  # MBR, GPT and its backup: gone
    part_start, part_end = PART_START * 512, (PART_START + PART_SECTORS) * 512
    assert data[part_start : part_start + MIB] == bytes(MIB)  # the filesystem's superblock: gone
    assert data[part_end - MIB : part_end] == bytes(MIB)
    assert data[EXT_MAGIC_AT : EXT_MAGIC_AT + 2] == b"\0\0"
    assert b"\0" not in data[part_start + MIB : part_start + 2 * MIB]  # the rest is left (metadata only)
    assert not has_table(dev)
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "available", node.last_error
    assert "cleaning (metadata)" in machine.output and "erased" in machine.output
    # The token: only in wget's arguments, never printed or left in a file.
    (token,) = machine.tokens_in_argv()
    assert token not in machine.output
    assert not [
        p for p in machine.root.rglob("*") if p.is_file() and p != machine.argv_log and token.encode() in p.read_bytes()
    ]


async def test_a_full_clean_zeroes_every_disk_entirely(cloud: Cloud, busybox: str) -> None:
    resp = await cloud.client.put(
        "/v1/flavors/bm.small/extra_specs/bmd:clean_erase", json={"value": "full"}, headers=cloud.auth
    )
    assert resp.status in (200, 201)
    w = await cleaning(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    disks = [tenant_disk(machine, "vda"), tenant_disk(machine, "vdb")]
    status = await machine.run(url_of(cloud), w.node_uuid, MAC)
    assert status == 0, machine.output
    for dev in disks:
        assert dev.read_bytes() == bytes(DISK_BYTES)
    await cloud.settle()
    assert (await cloud.node(w.node_id)).provision_state == "available"


async def test_a_disk_that_cannot_be_written_fails_the_clean_into_maintenance(cloud: Cloud, busybox: str) -> None:
    w = await cleaning(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    dev = tenant_disk(machine, "vda")
    dev.unlink()  # sysfs lists it, /dev has no node for it
    status = await machine.run(url_of(cloud), w.node_uuid, MAC)
    assert status == 1
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "clean failed" and node.maintenance
    assert node.maintenance_reason is not None and "cannot write to" in node.maintenance_reason
    logs = cloud.ctx.conductor.p.console_logs
    assert logs is not None and b"clean agent's console" in logs.read(w.node_uuid)


async def test_a_node_without_disks_fails_the_clean(cloud: Cloud, busybox: str) -> None:
    w = await cleaning(cloud)
    machine = Machine(cloud.tmp / "machine", busybox)
    status = await machine.run(url_of(cloud), w.node_uuid, MAC)
    assert status == 1
    await cloud.settle()
    node = await cloud.node(w.node_id)
    assert node.provision_state == "clean failed"
    assert node.maintenance_reason is not None and "no disk found to clean" in node.maintenance_reason
