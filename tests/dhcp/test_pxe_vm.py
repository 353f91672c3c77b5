"""The real thing: a QEMU VM on the provisioning bridge of a namespace the test creates, PXE-booted by the
dnsmasq bmd configures and supervises, chain-loading bmd's iPXE scripts over HTTP from bmd itself.

bmd (an in-process cloud: real app, real SQLite, fake power) runs on the host's loopback; the namespace
reaches it at ``http://10.77.0.1:8080`` (``PxeNetns.forward``), which is ``api.public_url``. A node whose MAC
is the VM's is deployed: the spawn writes the boot files and adds the MAC to dnsmasq's hosts dir; "power on"
is the test starting the VM. Proof, from bmd's own access log and dnsmasq's log: the VM gets a DHCP answer,
loads iPXE (UEFI: OVMF's own PXE fetches ``snponly.efi`` over TFTP from ``tftp_root``; BIOS: QEMU's NIC ROM
is iPXE already), iPXE GETs ``boot.ipxe`` and then the node's ``ipxe/01-<mac>.ipxe``, which GETs the deploy
kernel. A MAC of no deploying node gets no answer (``udhcpc`` on a veth: dnsmasq logs "ignored").

The deploy kernel here is a stub (4 KiB of bytes), so the chain ends at its GET; a full deploy swaps in the
real ramdisk (``make_cloud(deploy=...)``) and waits for the agent's callback instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bmd.drivers.deploy.spec import mac_link_name
from bmd.drivers.dhcp.dnsmasq import DnsmasqProvider
from tests.cloud import make_cloud
from tests.dhcp.conftest import (
    OVMF_CODE,
    OVMF_VARS,
    PUBLIC,
    AccessLog,
    PxeNetns,
    dhcp_client,
    dnsmasq_settings,
    need,
    qemu_argv,
    qemu_disk,
    ramdisk_cloud,
)

VM_MAC = "52:54:00:00:01:00"  # the MAC tests.cloud gives node 1
STRANGER = "52:54:00:ee:00:09"
BOOT_TIMEOUT = 150.0  # TCG, 2 shared cores: BIOS reaches the deploy kernel in ~10 s, OVMF in ~40 s


def ovmf_installed() -> bool:
    return OVMF_CODE.is_file() and OVMF_VARS.is_file()


async def wait_until(check: Any, within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                if check():
                    return
                await asyncio.sleep(0.2)  # polling logs with a deadline
    except TimeoutError:
        raise AssertionError(f"timed out after {within:g} s waiting for {what}") from None


@pytest.mark.parametrize(
    ("boot_mode", "ipv6_ra"),
    [("bios", False), ("uefi", True)],  # the default configuration; and with the documented IPv6 RA options
)
async def test_vm_pxe_boots_through_bmd_dnsmasq(
    boot_mode: str,
    ipv6_ra: bool,
    pxe_netns: PxeNetns,
    dnsmasq_installed: None,
    access_log: AccessLog,
    tmp_path: Path,
    db_file: Path,
) -> None:
    need("qemu-system-x86_64", "socat", "busybox")
    if boot_mode == "uefi" and not ovmf_installed():
        pytest.skip(f"{OVMF_CODE} not installed (Debian ovmf)")
    extra = pxe_netns.advertise_ipv6() if ipv6_ra else []
    pxe = dnsmasq_settings(tmp_path, pxe_netns, extra_options=extra).pxe.model_dump()
    async with make_cloud(tmp_path, pxe=pxe, api={"public_url": PUBLIC}) as cloud:
        dhcp = cloud.ctx.dhcp
        assert isinstance(dhcp, DnsmasqProvider) and dhcp.health()["running"]
        assert cloud.client.port is not None
        pxe_netns.forward(8080, cloud.client.port)
        await cloud.add_pxe_ips(1)
        [node_id] = await cloud.enroll(1, boot_mode=boot_mode)
        node = await cloud.node(node_id)
        status, body = await cloud.create()
        assert status == 202, body
        await cloud.settle()
        assert (await cloud.node(node_id)).provision_state == "wait_callback"
        assert dhcp.health()["hosts"] == 1

        launched = time.monotonic()
        vm = pxe_netns.spawn(qemu_argv(pxe_netns, tmp_path, boot_mode, VM_MAC), log=tmp_path / "qemu.log")
        node_script = f"/images/ipxe/{mac_link_name(VM_MAC)}.ipxe"
        kernel = f"/images/{node.uuid}/deploy_kernel"

        def log() -> str:
            return dhcp.files.log.read_text(errors="replace") if dhcp.files.log.exists() else ""

        try:
            await wait_until(lambda: access_log.got(kernel) or vm.poll() is not None, BOOT_TIMEOUT, "deploy kernel")
            assert vm.poll() is None, (tmp_path / "qemu.log").read_text()
            assert access_log.got("/images/boot.ipxe") and access_log.got(node_script), access_log.lines
            figures = {p: (access_log.when(p) or launched) - launched for p in ("/images/boot.ipxe", kernel)}
            shown = ", ".join(f"{p} {t:.1f}" for p, t in figures.items())
            print(f"{boot_mode} (ipv6 ra: {ipv6_ra}): s from VM launch: {shown}")
            text = log()
            assert "DHCPACK(br0)" in text and f" {VM_MAC}" in text
            tags = [line.split("tags: ", 1)[1].split(", ") for line in text.splitlines() if "tags: " in line]
            assert any({"known", "bmd", f"bmd-{boot_mode}", "ipxe"} <= set(t) for t in tags), tags
            if boot_mode == "uefi":  # the firmware's own PXE took iPXE over TFTP from tftp_root, then iPXE asked
                assert any({"known", "efi64"} <= set(t) and "ipxe" not in t for t in tags), tags
                assert f"sent {cloud.tftp_root.resolve()}/snponly.efi to " in text, text
        finally:
            pxe_netns.stop(vm)

        # A MAC that belongs to no deploying node gets nothing.
        stranger = pxe_netns.add_port("vs0", STRANGER)
        assert await dhcp_client(pxe_netns, stranger, tmp_path, expect=False) is None
        assert f"{STRANGER} ignored" in log()


async def test_a_vm_deploys_through_bmd_dnsmasq_with_bmds_ramdisk(
    pxe_netns: PxeNetns,
    dnsmasq_installed: None,
    vm_ramdisk: Path,
    tmp_path: Path,
    db_file: Path,
) -> None:
    """The whole provisioning network for real, BIOS: dnsmasq's DHCP answers the deploying node's MAC, its
    TFTP gives the NIC's firmware iPXE's chain to bmd's HTTP scripts, iPXE boots bmd's ramdisk, whose agent
    gets its address from dnsmasq too (the node's PXE IP, pinned), looks up its token, writes the image
    to the VM's disk and calls back: the node is ``active`` and the disk holds the image."""
    async with ramdisk_cloud(tmp_path, pxe_netns, vm_ramdisk) as cloud:
        image = tmp_path / "images-src" / "two-mib.img"
        data = bytes(range(256)) * (2 * 1024 * 1024 // 256)
        image.write_bytes(data)
        await cloud.add_pxe_ips(1)
        [node_id] = await cloud.enroll(1, boot_mode="bios")
        status, body = await cloud.create(
            image_ref=str(image), image_checksum=f"sha256:{hashlib.sha256(data).hexdigest()}"
        )
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(node_id)
        assert node.provision_state == "wait_callback", node.last_error
        disk, serial = await qemu_disk(tmp_path / "disk.qcow2", "64M"), tmp_path / "serial.log"
        argv = qemu_argv(pxe_netns, tmp_path, "bios", VM_MAC, memory_mb=256)
        argv += ["-drive", f"file={disk},if=virtio,format=qcow2"]
        vm = pxe_netns.spawn(argv, log=tmp_path / "qemu.log")
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and vm.poll() is None:
                node = await cloud.node(node_id)
                if node.provision_state != "wait_callback":
                    break
                await asyncio.sleep(0.5)  # the VM's progress shows only in the database: poll with a deadline
            await cloud.settle()
            node = await cloud.node(node_id)
        finally:
            pxe_netns.stop(vm)
        log = serial.read_text(errors="replace") if serial.exists() else ""
        assert node.provision_state == "active", f"{node.provision_state}: {node.last_error}\n{log[-3000:]}"
        assert "bmd-agent: callback accepted" in log, log[-3000:]
        dnsmasq_log = cloud.ctx.dhcp.files.log.read_text(errors="replace")  # type: ignore[attr-defined]
        acks = [line for line in dnsmasq_log.splitlines() if "DHCPACK(br0)" in line and VM_MAC in line]
        assert len(acks) >= 2, dnsmasq_log  # the firmware's iPXE and the ramdisk's udhcpc, both from dnsmasq
        health = cloud.ctx.dhcp.health()
        # dnsmasq never died under it (2.90 aborted on the SIGHUP bmd used to send): the finish reloaded it
        assert health["running"] and health["restarts"] == 0 and health["reloads"] == 1, health
        compare_argv = ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(image), str(disk)]
        compare = await asyncio.to_thread(subprocess.run, compare_argv, capture_output=True, text=True, timeout=60)
        assert compare.returncode == 0, compare.stdout + compare.stderr
