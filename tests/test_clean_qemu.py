"""Cleaning between tenants on a real machine: bmd + one QEMU lab VM behind a lab IPMI BMC, bmd's own deploy
ramdisk. The demo image is deployed (the VM's disk holds its partition table and boot code), the instance
deleted: the instance is gone at once, the VM PXE-boots the same ramdisk, whose sh agent is told by its
lookup to clean, erases the disk's metadata, calls back; bmd powers it off and the node is available.
Read from the host afterwards (``qemu-img convert`` to raw), the disk no longer holds the image's partition
table or its data at the start or end.

Bounded: every wait has a deadline, the lab kills its VM by PID when it stops. Skips with the reason when
QEMU or the ramdisk's packages are missing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bmd.config import Settings
from bmd.lab.qemu import qemu_missing
from bmd.lab.quickstart import DEMO_MARKER
from tests.conftest import make_settings
from tests.lab_api import LabApi, serving_lab, until

MIB = 1 << 20


def raw_disk(disk: Path, out: Path, *, share: bool = False) -> bytes:
    """The VM's disk as raw bytes, read on the host (``share``: while the VM runs, without its lock)."""
    cmd = ["qemu-img", "convert", *(["-U"] if share else []), "-O", "raw", str(disk), str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    data = out.read_bytes()
    out.unlink()
    return data


def has_partition_table(data: bytes, scratch: Path) -> bool:
    scratch.write_bytes(data[: 4 * MIB] + data[-4 * MIB :])  # sfdisk reads what it needs of both ends
    done = subprocess.run(["sfdisk", "--dump", str(scratch)], capture_output=True, text=True, timeout=30)
    scratch.unlink()
    return done.returncode == 0 and "start=" in done.stdout


async def test_a_deleted_instances_disk_is_erased_by_the_clean_ramdisk_on_a_qemu_vm(
    tmp_path: Path, db_file: Path, deploy_ramdisk: Path
) -> None:
    missing = qemu_missing({"bios"})
    if missing:
        pytest.skip(f"QEMU lab machines: {missing}")
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk is not installed (Debian package fdisk)")
    settings: Settings = make_settings(
        tmp_path,
        driver={"default_power_driver": "ipmi", "console_interface": "tcp"},
        ipmi={"timeout": 2.0, "min_command_interval": 0.0},
        tasks={"host_state_interval": 0.2, "update_resources_interval": 0.2},
        deploy={"automated_clean": True, "clean_timeout": 300.0, "deploy_timeout": 300.0},
    )
    state_dir = Path(settings.service.state_dir)
    await asyncio.to_thread(shutil.copytree, deploy_ramdisk, state_dir / "ramdisk")
    async with serving_lab(settings, count=1, machines="qemu", within=90) as (lab, ctx, endpoint):
        info = lab.machine("lab-0001")
        assert info.disk is not None and info.serial_log is not None
        demo = state_dir / "lab" / "images" / "demo.img"
        image = await asyncio.to_thread(demo.read_bytes)
        headers = {"Authorization": f"Bearer {ctx.api_token}"}
        async with aiohttp.ClientSession(endpoint.url, headers=headers) as http:
            api = LabApi(http)
            await until("lab node schedulable", lambda: api.schedulable("lab"), bool, 30)
            uuid = await api.create("lab", demo)
            inst = await api.settle(uuid, "active", 300)
            before = await asyncio.to_thread(raw_disk, info.disk, tmp_path / "before.raw", share=True)
            assert before[:MIB] == image[:MIB] and before[:MIB] != bytes(MIB)  # the tenant's bytes are there
            assert has_partition_table(before, tmp_path / "scratch")

            status, body = await api.call("DELETE", f"/v1/instances/{uuid}")
            assert status == 202, body
            await api.settle(uuid, "deleted", 60)  # the instance is freed at once (Ironic's order)

            def cleaned(node: dict[str, Any]) -> bool:
                if node["provision_state"] == "clean failed":
                    raise AssertionError(f"the clean failed: {node['maintenance_reason']}")
                return node["provision_state"] == "available"

            node = await until("the node cleaned", lambda: api.node(inst["node"]), cleaned, 300)
            assert node["instance_uuid"] is None and not node["maintenance"]
            assert (await lab.machine_pids()) == {"lab-0001": None}  # bmd powered the VM off after its clean
            serial = await asyncio.to_thread(info.serial_log.read_text, errors="replace")
            # bmd's agent, in clean mode (what it prints after its callback may be cut by the power-off)
            assert "cleaning (metadata)" in serial and "disks erased (metadata)" in serial

        after = await asyncio.to_thread(raw_disk, info.disk, tmp_path / "after.raw")
        assert len(after) == len(before)
        assert after[:MIB] == bytes(MIB) and after[-MIB:] == bytes(MIB)
        assert not has_partition_table(after, tmp_path / "scratch")
        assert DEMO_MARKER.encode() not in after[:MIB]
