"""The real collector ``bmd/agent/inspect.sh`` under busybox sh: on a machine made of files (every field,
the escaping of strange strings, what is skipped), on this host's own /proc and /sys, and its report
accepted by bmd's model and mapped to node fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmd.inspection.mapping import map_report
from bmd.inspection.report import InspectionReport
from tests.inspection.collector import FakeMachine, busybox_or_skip, run_collector, write


@pytest.fixture
def busybox() -> str:
    return busybox_or_skip()


def fake_machine(root: Path) -> FakeMachine:
    m = FakeMachine(root)
    write(
        root / "cpuinfo",
        "".join(f'processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) "Gold" 6130\\x\n\n' for i in range(4)),
    )
    write(root / "meminfo", "MemTotal:        8000000 kB\nMemFree:  100 kB\n")
    mem = m.sys / "devices" / "system" / "memory"
    write(mem / "block_size_bytes", "8000000\n")  # hex: 128 MiB
    for i in range(66):
        write(mem / f"memory{i}" / "online", "0\n" if i >= 64 else "1\n")
    (m.sys / "firmware" / "efi").mkdir(parents=True)
    write(m.sys / "class" / "dmi" / "id" / "sys_vendor", "QEMU\n")
    write(m.sys / "class" / "dmi" / "id" / "product_name", "Standard PC (Q35 + ICH9, 2009)\n")
    m.disk("sda", 480, rotational=0, model="Samsung SSD 870 ", vendor="ATA     ", serial="S5Y1NX0R")
    m.disk("sdb", 4000, rotational=1, model="HGST\tHUS726\x01", wwid="naa.5000cca26b")
    m.disk("loop0", 1)  # skipped, like ram*, sr*, zram*, nbd*, dm-*
    m.disk("sr0", 1)
    m.disk("nvme0n1", 0)  # an empty device: skipped
    m.nic("lo", "00:00:00:00:00:00", carrier=1)
    m.nic("eth0", "52:54:00:12:34:56", carrier=1, speed="10000")
    m.nic("eth1", "52:54:00:12:34:57", carrier=0, speed="-1")  # down: no speed
    m.nic("eth2", "52:54:00:12:34:58")  # carrier unreadable (interface down)
    return m


def test_the_report_of_a_machine_made_of_files(tmp_path: Path, busybox: str) -> None:
    m = fake_machine(tmp_path / "m")
    env = m.env()
    raw = run_collector(busybox, tmp_path, env)
    assert raw["cpu"] == {"count": 4, "arch": "x86_64", "model": 'Intel(R) Xeon(R) "Gold" 6130\\x'}
    assert raw["memory"] == {"total_mib": 7812, "physical_mib": 64 * 128}
    assert raw["boot_mode"] == "uefi"
    assert raw["system"] == {"vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)", "serial": None}
    assert raw["disks"] == [
        {"name": "sda", "size": 480 << 30, "model": "Samsung SSD 870", "vendor": "ATA", "serial": "S5Y1NX0R",
         "wwn": None, "rotational": False},
        {"name": "sdb", "size": 4000 << 30, "model": "HGST HUS726", "vendor": None, "serial": None,
         "wwn": "naa.5000cca26b", "rotational": True},
    ]  # fmt: skip
    assert raw["nics"] == [
        {"name": "eth0", "mac": "52:54:00:12:34:56", "carrier": True, "speed_mbps": 10000, "lldp": None},
        {"name": "eth1", "mac": "52:54:00:12:34:57", "carrier": False, "speed_mbps": None, "lldp": None},
        {"name": "eth2", "mac": "52:54:00:12:34:58", "carrier": None, "speed_mbps": None, "lldp": None},
    ]
    report = InspectionReport.model_validate(raw)
    facts = map_report(report, root_device={"size": ">= 1000"})
    assert (facts.cpus, facts.memory_mb, facts.local_gb, facts.root_disk) == (4, 8192, 4000, "sdb")
    assert facts.capabilities["cpu_arch"] == "x86_64" and facts.boot_mode == "uefi"
    assert facts.capabilities["disk_rotational"] == "true"
    assert [i.address for i in facts.interfaces] == ["52:54:00:12:34:56", "52:54:00:12:34:57", "52:54:00:12:34:58"]


def test_the_report_of_this_host(tmp_path: Path, busybox: str) -> None:
    """The real /proc and /sys of the machine running the tests: whatever they hold, the model accepts it."""
    raw = run_collector(busybox, tmp_path, {"BMD_AGENT_LLDP_WAIT": "0"})
    report = InspectionReport.model_validate(raw)
    print(f"this host: {report.cpu.count} x {report.cpu.arch} {report.cpu.model!r}, {report.memory_mib} MiB, "
          f"{len(report.disks)} disks, {len(report.nics)} NICs")  # fmt: skip
    assert report.cpu.count >= 1
    assert report.memory_mib and report.memory_mib > 0
