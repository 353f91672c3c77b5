"""Inspection for real, end to end through bmd: a QEMU VM on the provisioning bridge of a namespace the test
creates, enrolled with only its BMC and its MAC, is inspected by ``POST /v1/nodes/{node}/inspect``.

bmd (in-process: real app, real SQLite, dnsmasq on the namespace's bridge, fake power) writes the inspect
boot's PXE files and powers the node on; the test is the BMC: when the fake driver's power goes on it starts
the VM, when bmd powers it off it stops it. The VM PXE-boots bmd's real ramdisk through dnsmasq; its agent
looks up (``mode=inspect``), runs the collector, which hears the LLDP a "switch" sends on the bridge (a raw
AF_PACKET socket in the namespace: chassis id a MAC, port id ``Ethernet12``), and posts the report with its
token. Proof: the node is ``available`` again with the VM's CPUs, memory and disk, ``cpu_arch``, and its
interface holds the switch's chassis id and port number; the stored report names the VM's disk and NIC.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from sqlalchemy import select

from bmd.db.models import PxeIp
from bmd.drivers.power.base import PowerState
from bmd.states import ProvisionState
from tests.dhcp.conftest import AccessLog, PxeNetns, qemu_argv, qemu_disk, ramdisk_cloud, wait_for
from tests.inspection.test_lldp import SENDER

VM_MAC, PXE_IP = "52:54:00:00:0c:01", "10.77.0.60"
CPUS, MEMORY_MB, DISK_GIB = 2, 256, 2
DISK_SERIAL = "BMD-INSPECT-1"
CHASSIS, SWITCH_PORT_MAC, PORT_ID = "0a:1b:2c:3d:4e:5f", "0a:1b:2c:3d:4e:6c", "Ethernet12"
LLDP_WAIT = 8  # inspection.lldp_wait: the frames come every 0.5 s, so this is only the upper bound
INSPECT_TIMEOUT = 240.0  # TCG on 2 shared cores; measured: 12-15 s from the POST to available


async def test_a_vm_is_inspected_through_bmd_and_its_nic_hears_the_switch(
    pxe_netns: PxeNetns,
    dnsmasq_installed: None,
    vm_ramdisk: Path,
    access_log: AccessLog,
    tmp_path: Path,
    db_file: Path,
) -> None:
    async with ramdisk_cloud(tmp_path, pxe_netns, vm_ramdisk, inspection={"lldp_wait": LLDP_WAIT}) as cloud:
        pxe_ip = {"address": PXE_IP, "server_address": pxe_netns.address}  # on the bridge: dnsmasq pins it
        assert (await cloud.client.post("/v1/pxe_ips", json=pxe_ip, headers=cloud.auth)).status == 201
        enroll = {
            "name": "vm-1",  # only its BMC and its MAC: cpus, memory_mb, local_gb unknown (0)
            "pm_driver": "fake",
            "pm_address": "fake-vm-1",
            "pm_user": "admin",
            "pm_password": "pw",
            "interfaces": [{"address": VM_MAC}],
        }
        resp = await cloud.client.post("/v1/nodes", json=enroll, headers=cloud.auth)
        assert resp.status == 201, await resp.text()
        node_id = (await resp.json())["id"]
        before = await cloud.node(node_id)
        assert (before.cpus, before.memory_mb, before.local_gb) == (0, 0, 0)

        disk = await qemu_disk(tmp_path / "disk.qcow2", f"{DISK_GIB}G")
        argv = qemu_argv(pxe_netns, tmp_path, "bios", VM_MAC, memory_mb=MEMORY_MB, cpus=CPUS)
        argv += ["-drive", f"file={disk},if=none,id=d0,format=qcow2"]
        argv += ["-device", f"virtio-blk-pci,drive=d0,serial={DISK_SERIAL}"]
        serial, sender_log = tmp_path / "serial.log", tmp_path / "lldp-sender.log"

        # The switch: LLDP on the bridge every 0.5 s (at most 400 frames: 200 s), killed by PID when done.
        sender_argv = [sys.executable, "-c", SENDER, pxe_netns.bridge, SWITCH_PORT_MAC, CHASSIS, PORT_ID, "0.5", "400"]
        sender = pxe_netns.spawn(sender_argv, log=sender_log)
        wait_for(lambda: "sending" in sender_log.read_text() or sender.poll() is not None, 10, "the LLDP sender")
        assert sender.poll() is None, sender_log.read_text()

        resp = await cloud.client.post(f"/v1/nodes/{node_id}/inspect", headers=cloud.auth)
        assert resp.status == 202, await resp.text()
        posted = time.monotonic()
        bmc = cloud.fake.bmc(node_id)
        vm = None
        powered_on = powered_off = None
        try:
            deadline = posted + INSPECT_TIMEOUT
            while time.monotonic() < deadline:
                node = await cloud.node(node_id)  # first: bmd powers the node off before it is available
                if vm is None and bmc.power is PowerState.ON:  # bmd powered it on: the machine starts
                    vm, powered_on = pxe_netns.spawn(argv, log=tmp_path / "qemu.log"), time.monotonic()
                elif vm is not None and powered_off is None and bmc.power is PowerState.OFF:
                    powered_off = time.monotonic()  # bmd powered it off: the machine stops
                    await asyncio.to_thread(pxe_netns.stop, vm)
                if node.provision_state != ProvisionState.INSPECTING:
                    break
                if vm is not None and powered_off is None and vm.poll() is not None:
                    break  # QEMU died under it: nothing more will come
                await asyncio.sleep(0.2)  # the VM's progress shows only in the database: poll with a deadline
            done = time.monotonic()
            await cloud.settle()
            node = await cloud.node(node_id)
        finally:
            if vm is not None:
                await asyncio.to_thread(pxe_netns.stop, vm)
            await asyncio.to_thread(pxe_netns.stop, sender)
        console = serial.read_text(errors="replace") if serial.exists() else ""
        qemu_log = (tmp_path / "qemu.log").read_text(errors="replace") if vm is not None else "(never started)"
        why = f"{node.provision_state}: {node.last_error}\nqemu: {qemu_log[-2000:]}\nconsole: {console[-4000:]}"
        assert node.provision_state == ProvisionState.AVAILABLE, why
        assert powered_on is not None and powered_off is not None, why
        uuid = node.uuid
        marks = {
            "power on": powered_on,
            "boot.ipxe": access_log.when("/images/boot.ipxe"),
            "kernel": access_log.when(f"/images/{uuid}/deploy_kernel"),
            "ramdisk": access_log.when(f"/images/{uuid}/deploy_ramdisk"),
            "lookup": access_log.when("/v1/agent/lookup", "POST"),
            "report": access_log.when(f"/v1/agent/nodes/{uuid}/inspection", "POST"),
            "power off": powered_off,
            "available": done,
        }
        timeline = ", ".join(f"{k} {t - posted:.1f}" for k, t in marks.items() if t is not None)
        print(f"\ninspection: s from POST /inspect: {timeline}")

        # The VM's hardware, on the node.
        assert (node.cpus, node.memory_mb, node.local_gb) == (CPUS, MEMORY_MB, DISK_GIB), why
        assert node.last_error is None and not node.maintenance, why
        shown = await (await cloud.client.get(f"/v1/nodes/{node_id}", headers=cloud.auth)).json()
        assert shown["extra_specs"]["cpu_arch"] == "x86_64", shown
        assert (shown["cpus"], shown["memory_mb"], shown["local_gb"]) == (CPUS, MEMORY_MB, DISK_GIB), shown

        # The switch the NIC heard: datapath_id = the LLDP chassis id, port_no from the port id.
        resp = await cloud.client.get(f"/v1/nodes/{node_id}/interfaces", headers=cloud.auth)
        ifaces = (await resp.json())["interfaces"]
        assert [(i["address"], i["datapath_id"], i["port_no"]) for i in ifaces] == [(VM_MAC, CHASSIS, 12)], ifaces

        # The stored report: the VM's disk and NIC as the ramdisk saw them.
        resp = await cloud.client.get(f"/v1/nodes/{node_id}/inspection", headers=cloud.auth)
        assert resp.status == 200, await resp.text()
        report = (await resp.json())["report"]
        disks = {d["name"]: d for d in report["disks"]}
        assert disks["vda"]["size"] == DISK_GIB << 30 and disks["vda"]["serial"] == DISK_SERIAL, report["disks"]
        nics = {n["mac"]: n for n in report["nics"]}
        lldp = nics[VM_MAC]["lldp"]
        assert lldp is not None and (lldp["chassis_id"], lldp["port_id"]) == (CHASSIS, PORT_ID), report["nics"]
        assert (lldp["chassis_id_subtype"], lldp["port_id_subtype"]) == (4, 5), lldp
        assert report["cpu"]["count"] == CPUS and report["boot_mode"] == "bios", report

        # bmd drove the BMC: PXE next boot, on, and off at the end; the steps are recorded.
        assert bmc.calls[-1] == f"set_power_state:{PowerState.OFF.value}" and bmc.power is PowerState.OFF, bmc.calls
        on = bmc.calls.index(f"set_power_state:{PowerState.ON.value}")
        assert "set_boot_device:pxe" in bmc.calls[:on], bmc.calls
        steps = {s["step"]: s for s in node.deploy_steps or []}
        assert {"inspect_boot_config", "inspect_power_on", "wait_agent", "inspection_report"} <= set(steps), steps
        assert all(steps[s]["ok"] for s in ("inspect_boot_config", "inspect_power_on", "wait_agent")), steps
        assert steps["inspection_report"]["ok"], steps
        beats = [s["detail"] for s in node.deploy_steps or [] if s["step"] == "heartbeat"]
        assert f"agent up at {PXE_IP}: inspecting (LLDP: {LLDP_WAIT} s per NIC)" in beats, beats
        # On its console too (not its last lines: bmd powers it off as soon as the report is in, and the
        # guest may not have printed "inspection report accepted" by then).
        assert f"bmd-agent: agent up at {PXE_IP}: inspecting" in console, console[-3000:]
        # Nothing of the boot is left: no DHCP entry, no PXE IP held.
        assert cloud.ctx.dhcp.health()["hosts"] == 0, cloud.ctx.dhcp.health()
        async with cloud.ctx.sessionmaker() as session:
            assert await session.scalar(select(PxeIp.bm_node_id).where(PxeIp.address == PXE_IP)) is None
