"""LLDP for real: in a network namespace the test creates, a sender (Python, a raw AF_PACKET socket) puts
LLDP frames on one end of a veth pair, the real collector (busybox sh + Debian's tcpdump) listens on the
other and reports the switch's chassis id and port id; bmd maps them to the interface's datapath_id and
port_no. A NIC hearing nothing within BMD_AGENT_LLDP_WAIT reports null."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmd.inspection.mapping import map_report
from bmd.inspection.report import InspectionReport
from tests.inspection.collector import busybox_or_skip, run_collector

# argv: IFACE SRC_MAC [CHASSIS_MAC PORT_ID INTERVAL_S COUNT] (all four or none); prints "sending" once bound.
# Bounded: COUNT frames (by default 600 every 0.1 s: at most a minute); the tests kill it by PID when done.
SENDER = r"""
import socket, struct, sys, time
iface, src = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
defaults = ["aa:bb:cc:00:00:01", "Ethernet7", "0.1", "600"]
chassis, port, interval, count = sys.argv[3:7] if len(sys.argv) > 3 else defaults
def tlv(t, v): return struct.pack("!H", (t << 9) | len(v)) + v
frame = (bytes.fromhex("0180c200000e") + src + b"\x88\xcc"
    + tlv(1, b"\x04" + bytes.fromhex(chassis.replace(":", "")))   # chassis id: a MAC address
    + tlv(2, b"\x05" + port.encode())                              # port id: an interface name
    + tlv(3, b"\x00\x78") + tlv(4, b'to "rack 3" \\ uplink') + tlv(5, b"tor-1.lab") + tlv(0, b""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
print("sending", flush=True)
for _ in range(int(count)):
    s.send(frame)
    time.sleep(float(interval))
"""


def skip(reason: str) -> None:
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        skip(f"network namespace tests need root (CAP_NET_ADMIN); running as uid {os.geteuid()}")
    if shutil.which("ip") is None:
        skip("ip not installed (Debian package iproute2)")
    name = f"bmd-lldp-{secrets.token_hex(4)}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        skip(f"cannot create a network namespace: {done.stderr.strip()}")
    try:
        ns = ["netns", "exec", name, "ip"]
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "link", "add", "nic0", "address", "52:54:00:aa:00:01", "type", "veth", "peer", "name", "sw0")
        ip(*ns, "link", "add", "nic1", "address", "52:54:00:aa:00:02", "type", "veth", "peer", "name", "sw1")
        for dev in ("nic0", "sw0", "nic1", "sw1"):
            ip(*ns, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)


def test_lldp_neighbours_are_reported_per_nic(tmp_path: Path, netns: str) -> None:
    busybox = busybox_or_skip()
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        skip("tcpdump not installed (Debian package tcpdump)")
    sender = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, "sw0", "aa:bb:cc:00:00:07"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sender.stdout is not None and sender.stdout.readline().strip() == "sending", sender.stderr
        env = {"BMD_AGENT_TCPDUMP": tcpdump, "BMD_AGENT_LLDP_WAIT": "3", "BMD_AGENT_LLDP_IFACES": "nic0 nic1"}
        raw = run_collector(busybox, tmp_path, env, netns=netns)
    finally:
        sender.kill()
        sender.wait(timeout=10)
    by_name = {n["name"]: n for n in raw["nics"]}
    assert by_name["nic0"]["lldp"] == {
        "chassis_id": "aa:bb:cc:00:00:01",
        "chassis_id_subtype": 4,
        "port_id": "Ethernet7",
        "port_id_subtype": 5,
        "system_name": "tor-1.lab",
        "port_description": 'to "rack 3" \\ uplink',
    }
    assert by_name["nic1"]["lldp"] is None  # nothing sent there: the capture ended after BMD_AGENT_LLDP_WAIT
    raw["disks"] = [{"name": "vda", "size": 10 << 30}]  # the namespace shares the host's disks: a fixed one
    facts = map_report(InspectionReport.model_validate(raw))
    links = {i.address: (i.datapath_id, i.port_no) for i in facts.interfaces}
    assert links["52:54:00:aa:00:01"] == ("aa:bb:cc:00:00:01", 7)
    assert links["52:54:00:aa:00:02"] == (None, None)


def test_the_ramdisks_own_userland_hears_lldp(tmp_path: Path, netns: str, deploy_ramdisk: Path) -> None:
    """The built ramdisk unpacked and chrooted into inside the namespace (its busybox, its tcpdump with the
    libraries the builder copied, /etc/passwd for ``-Z root``), sysfs mounted as /init does: the collector
    reports the neighbour exactly as on the host."""
    for tool in ("cpio", "unshare", "chroot"):
        if shutil.which(tool) is None:
            skip(f"{tool} not installed")
    root = tmp_path / "ramdisk"
    root.mkdir()
    raw = gzip.decompress((deploy_ramdisk / "deploy_ramdisk").read_bytes())
    subprocess.run(["cpio", "-id", "--quiet"], input=raw, cwd=root, check=True, timeout=60)
    assert (root / "usr/bin/tcpdump").exists() and (root / "etc/passwd").exists()
    sender = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, "sw0", "aa:bb:cc:00:00:07"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    inner = (
        f"mount -t sysfs sysfs {root}/sys && mount -t proc proc {root}/proc && "
        f"exec chroot {root} /bin/sh -c "
        '\'BMD_AGENT_WORK=/run/bmd-agent BMD_AGENT_LLDP_WAIT=3 BMD_AGENT_LLDP_IFACES="nic0 nic1" PATH=/bin:/sbin '
        ". /usr/lib/bmd-agent/inspect.sh && bmd_inspect_report'"
    )
    try:
        assert sender.stdout is not None and sender.stdout.readline().strip() == "sending", sender.stderr
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private", "sh", "-c", inner],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        sender.kill()
        sender.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    report = InspectionReport.model_validate(json.loads(done.stdout))
    by_name = {n.name: n for n in report.nics}
    assert by_name["nic0"].lldp is not None
    assert (by_name["nic0"].lldp.chassis_id, by_name["nic0"].lldp.port_id) == ("aa:bb:cc:00:00:01", "Ethernet7")
    assert by_name["nic1"].lldp is None
