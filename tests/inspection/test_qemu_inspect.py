"""The collector in the built ramdisk in a QEMU VM (TCG): the VM's real CPUs, memory, virtio and SCSI disks
(model, vendor, serial, rotational as QEMU presents them) and NICs, and LLDP frames the test sends into
one NIC through QEMU's UDP socket netdev (each datagram is an Ethernet frame for the guest: no root, no
namespace needed). The ramdisk is booted with ``rdinit=/bin/sh``: the test types the collector's commands
on the serial console and reads the report back from it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from bmd.inspection.mapping import map_report
from bmd.inspection.report import InspectionReport
from tests.agent.test_qemu_boot import tool_or_skip

LIMIT = 240.0
LLDP_MAC, PLAIN_MAC = "52:54:00:00:0a:01", "52:54:00:00:0a:02"


def lldp_frame() -> bytes:
    def tlv(t: int, v: bytes) -> bytes:
        return struct.pack("!H", (t << 9) | len(v)) + v

    return (
        bytes.fromhex("0180c200000e") + bytes.fromhex("aabbcc0000ff") + b"\x88\xcc"
        + tlv(1, b"\x04" + bytes.fromhex("aabbcc000001")) + tlv(2, b"\x05" + b"ge-0/0/12")
        + tlv(3, b"\x00\x78") + tlv(5, b"leaf-2") + tlv(0, b"")
    )  # fmt: skip


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COMMANDS = [
    "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mkdir -p /run",
    "while read -r m; do insmod /lib/modules/$m 2>/dev/null; done </lib/bmd-modules.order",
    # the disk and NIC drivers probe in the background: poll (bounded) until the last ones are there
    "n=0; while ! [ -e /sys/block/sda ] || ! [ -e /sys/class/net/eth1 ]; do [ $n -ge 300 ] && break; "
    "n=$((n+1)); usleep 100000; done; ls /sys/block /sys/class/net",
    "BMD_AGENT_LLDP_WAIT=15 BMD_AGENT_WORK=/run/w sh -c '. /usr/lib/bmd-agent/inspect.sh && bmd_inspect_report' "
    '>/run/r.json; echo "@@""REPORT""@@"; cat /run/r.json; echo "@@""END""@@"',
    'for f in /run/w/lldp/*.log; do echo "$f:"; cat "$f"; done; echo "@@""LOGS""@@"',
]


async def test_the_collector_in_a_qemu_vm(tmp_path: Path, deploy_ramdisk: Path) -> None:
    qemu = tool_or_skip("qemu-system-x86_64", "qemu-system-x86")
    qemu_img = tool_or_skip("qemu-img", "qemu-utils")
    for name, size in (("vda.qcow2", "3G"), ("sda.qcow2", "5G")):
        create = [qemu_img, "create", "-q", "-f", "qcow2", str(tmp_path / name), size]
        await asyncio.to_thread(subprocess.run, create, check=True, timeout=30)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    guest_port = free_udp_port()
    argv = [
        qemu, "-machine", "pc,accel=tcg", "-smp", "2", "-m", "384",
        "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot", "-serial", "stdio",
        "-kernel", str(deploy_ramdisk / "deploy_kernel"), "-initrd", str(deploy_ramdisk / "deploy_ramdisk"),
        "-append", "console=ttyS0 rdinit=/bin/sh quiet",
        "-drive", f"file={tmp_path / 'vda.qcow2'},if=none,id=d1,format=qcow2",
        "-device", "virtio-blk-pci,drive=d1,serial=BMD-VIRTIO-1",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={tmp_path / 'sda.qcow2'},if=none,id=d2,format=qcow2",
        "-device", "scsi-hd,drive=d2,bus=scsi0.0,vendor=BMDLAB,product=BMD SSD 5G,serial=SSD-0042,rotation_rate=1",
        "-netdev", f"socket,id=n0,udp=127.0.0.1:{sender.getsockname()[1]},localaddr=127.0.0.1:{guest_port}",
        "-device", f"virtio-net-pci,netdev=n0,mac={LLDP_MAC},romfile=",
        "-netdev", "user,id=n1,restrict=on", "-device", f"virtio-net-pci,netdev=n1,mac={PLAIN_MAC},romfile=",
    ]  # fmt: skip
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()

    async def read_until(marker: bytes, deadline: float) -> None:
        assert proc.stdout is not None
        while marker not in out:
            chunk = await asyncio.wait_for(proc.stdout.read(4096), max(0.1, deadline - time.monotonic()))
            if not chunk:
                raise AssertionError(f"QEMU exited before {marker!r}:\n{out.decode(errors='replace')[-3000:]}")
            out.extend(chunk)

    frame = lldp_frame()

    async def send_lldp() -> None:
        while True:  # a switch's LLDP, faster than a real one's 30 s; cancelled once the report is read
            sender.sendto(frame, ("127.0.0.1", guest_port))
            await asyncio.sleep(0.5)

    lldp = asyncio.create_task(send_lldp())
    try:
        deadline = started + LIMIT
        await read_until(b"job control turned off", deadline)  # busybox sh is PID 1, on the console
        for line in COMMANDS:
            proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()
        await read_until(b"@@LOGS@@", deadline)
        seconds = time.monotonic() - started
    finally:
        lldp.cancel()
        sender.close()
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    text = out.decode(errors="replace").replace("\r", "")
    body = text.split("@@REPORT@@", 1)[1].split("@@END@@", 1)[0].strip()
    raw = json.loads(body)
    logs = text.split("@@END@@", 1)[1].split("@@LOGS@@", 1)[0].strip()
    print(f"\nQEMU start to inspection report: {seconds:.1f} s\n{json.dumps(raw, indent=1)}")
    report = InspectionReport.model_validate(raw)
    assert report.cpu.count == 2 and report.cpu.arch == "x86_64"
    assert report.memory_mib is not None and 300 <= report.memory_mib <= 384
    disks = {d.name: d for d in report.disks}
    assert disks["vda"].size == 3 << 30 and disks["vda"].serial == "BMD-VIRTIO-1"
    assert (disks["sda"].size, disks["sda"].model, disks["sda"].vendor) == (5 << 30, "BMD SSD 5G", "BMDLAB")
    assert disks["sda"].serial == "SSD-0042" and disks["sda"].rotational is False
    nics = {n.mac: n for n in report.nics}
    assert nics[LLDP_MAC].lldp is not None, logs
    assert (nics[LLDP_MAC].lldp.chassis_id, nics[LLDP_MAC].lldp.port_id) == ("aa:bb:cc:00:00:01", "ge-0/0/12")
    assert nics[LLDP_MAC].lldp.system_name == "leaf-2"
    assert nics[PLAIN_MAC].lldp is None
    facts = map_report(report, root_device={"model": "bmd ssd 5g"})
    assert (facts.root_disk, facts.local_gb, facts.cpus) == ("sda", 5, 2)
    links = {i.address: (i.datapath_id, i.port_no) for i in facts.interfaces}
    assert links[LLDP_MAC] == ("aa:bb:cc:00:00:01", 12) and links[PLAIN_MAC] == (None, None)
