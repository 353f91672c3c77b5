"""From an inspection report to the node's fields.

- ``cpus`` = ``cpu.count``; ``memory_mb`` = the installed memory (``memory.physical_mib``, else
  ``memory.total_mib``); ``local_gb`` = the root disk's size in whole GiB (rounded down);
- the root disk is the one the deploy agent would write: the first disk matching the node's
  ``root_device`` hints (the same rules as ``bmd/agent/bmd-agent.sh``), the first disk without hints;
- ``boot_mode`` (the node's column, shown as the capability ``boot_mode``) = the firmware the ramdisk ran on;
- capabilities (the node's ``extra_specs``): ``cpu_arch`` (``uname -m``), ``cpu_model`` and
  ``disk_rotational`` (``true``/``false`` for the root disk when the kernel says), then the rules' own;
- one interface row per NIC with a MAC: ``address``, ``datapath_id`` = the LLDP chassis id, ``port_no`` =
  the LLDP port id when it is a number or ends in one (``Ethernet7`` and ``ge-0/0/7`` give 7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bmd.inspection.report import Disk, InspectionReport
from bmd.inspection.rules import Outcome, Rule, apply_rules

GIB = 1 << 30


class NoRootDisk(ValueError):
    """No disk of the report matches the node's root-device hints (or the report has no disk)."""


def _size_matches(gib: int, hint: Any) -> bool:
    text = str(hint).strip()
    m = re.fullmatch(r"(==|=|>=|<=|>|<|!=)?\s*(\d+)", text)
    if m is None:
        raise NoRootDisk(f"root device hint size must be a whole number of GiB, optionally after an operator: {hint!r}")
    op, want = m.group(1) or "==", int(m.group(2))
    return {
        "==": gib == want,
        "=": gib == want,
        ">=": gib >= want,
        "<=": gib <= want,
        ">": gib > want,
        "<": gib < want,
        "!=": gib != want,
    }[op]


def _lower(value: str | None) -> str:
    return (value or "").lower()


def root_disk(disks: Sequence[Disk], hints: Mapping[str, Any] | None) -> Disk:
    """The first disk matching every hint given (size in GiB, model/vendor case-insensitive,
    serial/name exact, wwn case-insensitive with or without its ``naa.`` type prefix)."""
    hints = hints or {}
    for disk in disks:
        if disk.size <= 0:
            continue
        if "name" in hints and str(hints["name"]).rsplit("/", 1)[-1] != disk.name:
            continue
        if "size" in hints and not _size_matches(disk.size // GIB, hints["size"]):
            continue
        if "model" in hints and _lower(str(hints["model"])) != _lower(disk.model):
            continue
        if "vendor" in hints and _lower(str(hints["vendor"])) != _lower(disk.vendor):
            continue
        if "serial" in hints and str(hints["serial"]) != (disk.serial or ""):
            continue
        if "wwn" in hints:
            want, have = _lower(str(hints["wwn"])), _lower(disk.wwn)
            if want not in (have, have.split(".", 1)[-1]):
                continue
        return disk
    seen = ", ".join(f"{d.name} ({d.size // GIB} GiB, model {d.model!r})" for d in disks) or "none"
    raise NoRootDisk(f"no disk matches the root device hints {dict(hints)!r}; disks seen: {seen}")


def port_number(port_id: str | None) -> int | None:
    if not port_id:
        return None
    m = re.search(r"(\d+)$", port_id.strip())
    return int(m.group(1)) if m and len(m.group(1)) <= 9 else None


@dataclass(frozen=True)
class InterfaceFacts:
    address: str
    datapath_id: str | None
    port_no: int | None


@dataclass
class NodeFacts:
    """What inspection sets on a node, and what its rules decided."""

    cpus: int
    memory_mb: int
    local_gb: int
    root_disk: str
    boot_mode: str  # the node's boot_mode column (bmd shows it as the capability boot_mode)
    capabilities: dict[str, str]
    interfaces: list[InterfaceFacts]
    outcome: Outcome = field(default_factory=Outcome)


def rule_facts(report: InspectionReport, disk: Disk | None) -> dict[str, Any]:
    """The names a rule's paths read (:data:`bmd.inspection.rules.ROOT`): the report plus the node fields."""
    facts = report.model_dump()
    facts.update(
        cpus=report.cpu.count,
        memory_mb=report.memory_mib,
        local_gb=disk.size // GIB if disk else None,
        cpu_arch=report.cpu.arch,
        root_disk=disk.model_dump() if disk else None,
    )
    return facts


def map_report(
    report: InspectionReport, root_device: Mapping[str, Any] | None = None, rules: Sequence[Rule] = ()
) -> NodeFacts:
    """The node's fields from a report (NoRootDisk when no disk fits, ValueError when memory is unknown)."""
    memory = report.memory_mib
    if not memory:
        raise ValueError("the report gives no memory size (memory.total_mib and memory.physical_mib are null)")
    disk = root_disk(report.disks, root_device)
    caps: dict[str, str] = {"cpu_arch": report.cpu.arch}
    if report.cpu.model:
        caps["cpu_model"] = report.cpu.model
    if disk.rotational is not None:
        caps["disk_rotational"] = "true" if disk.rotational else "false"
    outcome = apply_rules(rules, rule_facts(report, disk))
    caps.update(outcome.capabilities)
    interfaces = [
        InterfaceFacts(
            nic.mac,
            nic.lldp.chassis_id if nic.lldp else None,
            port_number(nic.lldp.port_id) if nic.lldp else None,
        )
        for nic in report.nics
        if nic.mac and nic.mac != "00:00:00:00:00:00"
    ]
    return NodeFacts(report.cpu.count, memory, disk.size // GIB, disk.name, report.boot_mode, caps, interfaces, outcome)
