"""OVSBridge against a private Open vSwitch (userspace datapath) started in tmp_path.

ovs-vswitchd runs with ``--enable-dummy=override`` so internal ports are dummy devices: no tap interfaces
appear on the host and nothing needs /dev/net/tun. Forwarding is checked with ``ofproto/trace`` (what the
switch would actually do with a frame), not only by reading the flow table.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmd.drivers.vif.ovs_bridge import OVSBridge, OVSSettings, vif_cookie
from bmd.errors import DriverError, InvalidInput

BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
CMD_TIMEOUT = 10
BRIDGE = "bmdtest0"
# interface name -> requested OpenFlow port
PORTS = {"node1": 5, "node2": 7, "node3": 8, "uplink": 9}
VIF1, VIF2, VIF3 = "vif-1111", "vif-2222", "vif-3333"


@dataclass(frozen=True)
class PrivateOVS:
    run_dir: Path
    db_sock: Path
    env: dict[str, str]

    def run(self, *argv: str) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed: {done.stderr}")
        return done.stdout

    def vsctl(self, *args: str) -> str:
        return self.run("ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=5", *args)

    def appctl(self, target: str, *args: str) -> str:
        return self.run("ovs-appctl", "-t", str(self.run_dir / f"{target}.ctl"), *args)

    def flows(self) -> list[str]:
        out = self.run("ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "--no-names", "dump-flows", BRIDGE)
        return sorted(line.strip() for line in out.splitlines() if "cookie=0xb3d0" in line)

    def trace(self, flow: str) -> list[str]:
        """The datapath actions for ``flow``, with datapath port numbers mapped back to OpenFlow ones."""
        dp_to_of: dict[str, str] = {}
        for m in re.finditer(r"^\s+\S+ (\d+)/(\d+):", self.appctl("ovs-vswitchd", "dpif/show"), re.M):
            dp_to_of[m.group(2)] = m.group(1)
        out = self.appctl("ovs-vswitchd", "ofproto/trace", BRIDGE, flow)
        actions = re.search(r"^Datapath actions: (.*)$", out, re.M)
        assert actions is not None, out
        parts = re.split(r",(?![^(]*\))", actions.group(1).strip())
        return [f"out:{dp_to_of[p]}" if p.isdigit() else p for p in parts]


def _start_ovs(run_dir: Path) -> PrivateOVS:
    env = dict(os.environ, OVS_RUNDIR=str(run_dir), OVS_LOGDIR=str(run_dir), OVS_DBDIR=str(run_dir))
    ovs = PrivateOVS(run_dir, run_dir / "db.sock", env)
    ovs.run("ovsdb-tool", "create", str(run_dir / "conf.db"), str(SCHEMA))
    ovs.run(
        "ovsdb-server",
        str(run_dir / "conf.db"),
        f"--remote=punix:{ovs.db_sock}",
        f"--pidfile={run_dir / 'ovsdb-server.pid'}",
        f"--unixctl={run_dir / 'ovsdb-server.ctl'}",
        f"--log-file={run_dir / 'ovsdb-server.log'}",
        "--detach",
    )
    ovs.vsctl("--no-wait", "init")
    ovs.run(
        "ovs-vswitchd",
        f"unix:{ovs.db_sock}",
        "--enable-dummy=override",
        f"--pidfile={run_dir / 'ovs-vswitchd.pid'}",
        f"--unixctl={run_dir / 'ovs-vswitchd.ctl'}",
        f"--log-file={run_dir / 'ovs-vswitchd.log'}",
        "--detach",
    )
    return ovs


def _stop_ovs(run_dir: Path, ovs: PrivateOVS | None) -> None:
    """Best effort, every step: del-br, ask both daemons to exit, then kill what is left (our pids only)."""
    if ovs is not None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            ovs.vsctl("--if-exists", "del-br", BRIDGE)
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                ovs.appctl(daemon, "exit")
    for name in ("ovs-vswitchd", "ovsdb-server"):
        pidfile = run_dir / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # exited already (pidfile removed) or never started


@pytest.fixture
def ovs(tmp_path: Path) -> Iterator[PrivateOVS]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing or not SCHEMA.exists():
        pytest.skip(f"Open vSwitch not installed (missing: {', '.join(missing) or SCHEMA})")
    run_dir = tmp_path / "ovs"
    run_dir.mkdir()
    assert len(str(run_dir / f"{BRIDGE}.mgmt")) < 100, "unix socket path too long"
    started: PrivateOVS | None = None
    try:
        started = _start_ovs(run_dir)
        started.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
        for name, port in PORTS.items():
            started.vsctl(
                "add-port",
                BRIDGE,
                name,
                "--",
                "set",
                "interface",
                name,
                "type=internal",
                f"ofport_request={port}",
            )
        yield started
    finally:
        _stop_ovs(run_dir, started)


def bridge(ovs: PrivateOVS, **settings: object) -> OVSBridge:
    return OVSBridge(BRIDGE, str(ovs.db_sock), OVSSettings(**settings), run_dir=str(ovs.run_dir))  # type: ignore[arg-type]


UNTAGGED_FROM = "in_port={},dl_src=52:54:00:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff"
TAGGED_FROM = "in_port={},dl_vlan={},dl_src=52:54:00:00:00:02,dl_dst=ff:ff:ff:ff:ff:ff"


async def test_ports_get_the_ofports_we_asked_for(ovs: PrivateOVS) -> None:
    br = bridge(ovs)
    await br.check()
    assert {name: await br.ofport(name) for name in PORTS} == PORTS


async def test_attach_puts_ports_on_their_vlans(ovs: PrivateOVS) -> None:
    br = bridge(ovs, uplink_ports=(9,))
    await br.attach(5, 100, VIF1)
    await br.attach(7, 100, VIF2)
    await br.attach(8, 200, VIF3)

    flows = ovs.flows()
    assert f"cookie={vif_cookie(VIF1, 100):#x}, priority=200,in_port=5,vlan_tci=0x0000/0x1fff " in "\n".join(flows)
    assert any("table=1" in f and "dl_vlan=100" in f and "output:9,pop_vlan,output:5,output:7" in f for f in flows)
    assert len(flows) == 3 * 2 + 2 * 2  # two per vif, two per vlan

    # node1 -> tagged 100 to the uplink, untagged to node2 (same VLAN), never to node3 (VLAN 200).
    assert ovs.trace(UNTAGGED_FROM.format(5)) == ["push_vlan(vid=100,pcp=0)", "out:9", "pop_vlan", "out:7"]
    assert ovs.trace(UNTAGGED_FROM.format(8)) == ["push_vlan(vid=200,pcp=0)", "out:9"]
    # uplink, VLAN 100 -> both members, untagged; VLAN 300 and untagged (NORMAL) -> no node port.
    assert ovs.trace(TAGGED_FROM.format(9, 100)) == ["pop_vlan", "out:5", "out:7"]
    assert ovs.trace(TAGGED_FROM.format(9, 300)) == ["out:65534"]
    assert ovs.trace(UNTAGGED_FROM.format(9)) == ["out:65534"]
    # a node tagging its own frames cannot hop onto VLAN 200.
    assert ovs.trace(TAGGED_FROM.format(5, 200)) == ["drop"]


async def test_attach_is_idempotent_and_moves_a_vif(ovs: PrivateOVS) -> None:
    br = bridge(ovs)
    await br.attach(5, 100, VIF1)
    before = ovs.flows()
    await br.attach(5, 100, VIF1)
    assert ovs.flows() == before

    await br.attach(7, 300, VIF1)  # the same vif, now on another port and VLAN
    flows = "\n".join(ovs.flows())
    assert "in_port=5" not in flows and "dl_vlan=100" not in flows
    assert ovs.trace(UNTAGGED_FROM.format(7)) == ["drop"]  # alone on VLAN 300, no uplink
    assert not any("vlan" in a for a in ovs.trace(UNTAGGED_FROM.format(5)))  # port 5: back to NORMAL
    assert sorted(ovs.trace(UNTAGGED_FROM.format(8))) == ["out:5", "out:65534", "out:9"]  # 5 floods, 7 not
    assert [(a.vlan_id, a.port_no) for a in await br.attachments()] == [(300, 7)]


async def test_detach_removes_exactly_that_vif(ovs: PrivateOVS) -> None:
    ovs.run("ovs-ofctl", "add-flow", BRIDGE, "cookie=0x42,priority=50,in_port=9,actions=NORMAL")
    br = bridge(ovs, uplink_ports=(9,))
    await br.attach(5, 100, VIF1)
    await br.attach(7, 100, VIF2)
    await br.attach(8, 200, VIF3)
    vif3_flows = [f for f in ovs.flows() if f"{vif_cookie(VIF3, 200):#x}" in f or "dl_vlan=200" in f]

    await br.detach(VIF1)
    assert ovs.trace(TAGGED_FROM.format(9, 100)) == ["pop_vlan", "out:7"]
    assert sorted(ovs.trace(UNTAGGED_FROM.format(9))) == ["out:5", "out:65534"]  # port 5 is NORMAL's again
    assert all("in_port=5" not in f for f in ovs.flows())

    await br.detach(VIF2)  # last member of VLAN 100: its VLAN flows go too
    assert all("dl_vlan=100" not in f for f in ovs.flows())
    assert ovs.flows() == sorted(vif3_flows)
    assert "cookie=0x42" in ovs.run("ovs-ofctl", "dump-flows", BRIDGE)  # not ours: untouched

    await br.detach(VIF2)  # idempotent
    await br.detach("never-attached")
    assert ovs.flows() == sorted(vif3_flows)


async def test_port_is_taken_over_by_a_new_vif(ovs: PrivateOVS) -> None:
    br = bridge(ovs)
    await br.attach(5, 100, VIF1)
    await br.attach(5, 200, VIF2)  # VIF1's flows were left behind (e.g. crash before unplug)
    assert [(a.vlan_id, a.port_no) for a in await br.attachments()] == [(200, 5)]
    assert all(f"{vif_cookie(VIF1, 100):#x}" not in f for f in ovs.flows())


async def test_errors_carry_stderr(ovs: PrivateOVS) -> None:
    missing = OVSBridge("nosuchbr", str(ovs.db_sock), run_dir=str(ovs.run_dir))
    with pytest.raises(DriverError, match=r"ovs-vsctl .*br-exists nosuchbr failed \(exit 2\)"):
        await missing.check()
    with pytest.raises(DriverError, match=r"ovs-ofctl .*nosuchbr.*failed \(exit 1\): .*nosuchbr"):
        await missing.detach(VIF1)


@pytest.mark.parametrize(
    ("port_no", "vlan_id", "vif", "field"),
    [
        (0, 100, VIF1, "port_no"),
        (0xFF00, 100, VIF1, "port_no"),
        (5, 0, VIF1, "vlan_id"),
        (5, 4095, VIF1, "vlan_id"),
        (5, 100, "", "vif_uuid"),
    ],
)
async def test_attach_validates_before_touching_the_switch(port_no: int, vlan_id: int, vif: str, field: str) -> None:
    br = OVSBridge("br-unused", settings=OVSSettings(ofctl="/nonexistent/ovs-ofctl"))
    with pytest.raises(InvalidInput) as info:
        await br.attach(port_no, vlan_id, vif)
    assert info.value.field == field


async def test_missing_binary_is_a_driver_error() -> None:
    br = OVSBridge("br0", settings=OVSSettings(ofctl="/nonexistent/ovs-ofctl"))
    with pytest.raises(DriverError, match=r"cannot run /nonexistent/ovs-ofctl"):
        await br.detach(VIF1)
