"""The built ramdisk boots in QEMU (TCG) and its agent deploys a 2 MiB image onto the VM's virtio disk
through a real bmd, reached only through QEMU's user-mode guestfwd (``restrict=on``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cloud import make_cloud

MAC = "52:54:00:00:01:00"  # node-1's interface in tests.cloud
PUBLIC_URL = "http://10.0.2.100:8080"
BOOT_LIMIT = 150.0


def tool_or_skip(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return found


def qemu_argv(qemu: str, ramdisk: Path, disk: Path, serial: Path, node_uuid: str, bmd_port: int) -> list[str]:
    append = f"console=ttyS0 bmd_node_uuid={node_uuid} bmd_url={PUBLIC_URL} BOOTIF=01-{MAC.replace(':', '-')}"
    netdev = f"user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:socat - TCP:127.0.0.1:{bmd_port}"
    return [
        qemu, "-machine", "pc,accel=tcg", "-smp", "1", "-m", "256",
        "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(ramdisk / "deploy_kernel"), "-initrd", str(ramdisk / "deploy_ramdisk"), "-append", append,
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
    ]  # fmt: skip


async def test_the_ramdisk_boots_in_qemu_and_the_agent_deploys(
    tmp_path: Path, db_file: Path, deploy_ramdisk: Path
) -> None:
    qemu = tool_or_skip("qemu-system-x86_64", "qemu-system-x86")
    qemu_img = tool_or_skip("qemu-img", "qemu-utils")
    tool_or_skip("socat", "socat")
    async with make_cloud(tmp_path, api={"public_url": PUBLIC_URL}) as cloud:
        image = tmp_path / "images-src" / "two-mib.img"
        data = hashlib.sha256(b"bmd").digest() * (2 * 1024 * 1024 // 32)
        image.write_bytes(data)
        (node_id,) = await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create(
            image_ref=str(image), image_checksum="sha256:" + hashlib.sha256(data).hexdigest()
        )
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(node_id)
        assert node.provision_state == "wait_callback", node.last_error
        disk, serial = tmp_path / "disk.qcow2", tmp_path / "serial.log"
        create = [qemu_img, "create", "-q", "-f", "qcow2", str(disk), "64M"]
        await asyncio.to_thread(subprocess.run, create, check=True, timeout=30)
        argv = qemu_argv(qemu, deploy_ramdisk, disk, serial, node.uuid, cloud.client.port)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        state, seconds = "wait_callback", None
        try:
            deadline = started + BOOT_LIMIT
            while time.monotonic() < deadline and proc.returncode is None:
                node = await cloud.node(node_id)
                if node.provision_state != "wait_callback":
                    state, seconds = node.provision_state, time.monotonic() - started
                    break
                try:  # poll, bounded: the VM's progress is only visible in the database and its serial log
                    await asyncio.wait_for(proc.wait(), 0.5)
                except TimeoutError:
                    pass
            await cloud.settle()
            state = (await cloud.node(node_id)).provision_state
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = await proc.communicate()
        log = serial.read_text(errors="replace") if serial.exists() else ""
        kept = Path(os.environ.get("BMD_TEST_ARTIFACTS", tmp_path)) / "qemu-serial.log"
        if state != "active":
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(log)
        assert state == "active", (
            f"node {state}: {node.last_error}; serial log kept at {kept}:\n{log[-4000:]}\n{err.decode()[-1000:]}"
        )
        print(f"\nQEMU boot to deployed callback: {seconds:.1f} s")  # measured, reported; never asserted
        assert "bmd-agent: callback accepted" in log and "bmd-agent: image checksum ok (sha256)" in log
        argv = [qemu_img, "compare", "-f", "raw", "-F", "qcow2", str(image), str(disk)]
        compare = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
        assert compare.returncode == 0, compare.stdout + compare.stderr
