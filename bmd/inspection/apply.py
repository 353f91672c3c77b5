"""Storing and applying an inspection report to a node, in the caller's transaction (all or nothing).

The report is validated (:class:`~bmd.inspection.report.InspectionReport`; a bad one is InvalidInput
naming the field, and nothing is written), mapped (:mod:`bmd.inspection.mapping`) and the rules run on
it. Unless a rule says ``fail``: ``cpus``, ``memory_mb``, ``local_gb``, ``boot_mode`` are set, the capabilities merged
into ``extra_specs``, every NIC with a MAC gets an interface row (a new one, or its LLDP switch/port
written on the existing one; a MAC that belongs to another node is a Conflict), and a ``maintenance``
rule puts the node in maintenance (``maintenance_set_by = "inspection"``). The report is stored in
``bm_nodes.inspection`` in every case, with ``inspected_at``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd import node_history as history
from bmd.db.models import BareMetalNode, Interface, utcnow
from bmd.errors import Conflict, InvalidInput, InvalidState
from bmd.inspection.mapping import NodeFacts, NoRootDisk, map_report
from bmd.inspection.report import InspectionReport
from bmd.inspection.rules import Rule
from bmd.node_events import note_nodes

# The states a report is accepted in (a node deploying or holding an instance keeps what it has).
INSPECTABLE_STATES = ("available", "error", "inspecting", "inspect failed")


@dataclass
class Applied:
    facts: NodeFacts | None
    failure: str | None  # why the report was not applied (a ``fail`` rule, no root disk, no memory)
    interfaces_added: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "applied": self.failure is None,
            "failure": self.failure,
            "cpus": f.cpus if f else None,
            "memory_mb": f.memory_mb if f else None,
            "local_gb": f.local_gb if f else None,
            "root_disk": f.root_disk if f else None,
            "capabilities": f.capabilities if f else {},
            "rules_matched": f.outcome.matched if f else [],
            "maintenance": f.outcome.maintenance if f else None,
            "interfaces_added": self.interfaces_added,
        }


def validate_report(raw: Any) -> InspectionReport:
    if not isinstance(raw, Mapping):
        raise InvalidInput("the inspection report must be a JSON object", field="report")
    try:
        return InspectionReport.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "report"
        raise InvalidInput(f"{where}: {first['msg']}", field=where) from None


async def apply_report(session: AsyncSession, node: BareMetalNode, raw: Any, rules: Sequence[Rule] = ()) -> Applied:
    """Store and apply ``raw`` to ``node`` (loaded for update in ``session``, which the caller commits)."""
    if node.instance_uuid is not None:
        raise InvalidState(f"node {node.id} holds instance {node.instance_uuid}; it cannot be inspected")
    if node.provision_state not in INSPECTABLE_STATES:
        raise InvalidState(f"node {node.id} is {node.provision_state}; it cannot be inspected now")
    report = validate_report(raw)
    node.inspection = report.model_dump(mode="json")
    node.inspected_at = utcnow()
    try:
        facts = map_report(report, node.root_device, rules)
    except (NoRootDisk, ValueError) as err:
        await note_nodes(session, [node.id])
        return Applied(None, str(err))
    if facts.outcome.failure is not None:
        await note_nodes(session, [node.id])
        return Applied(facts, facts.outcome.failure)
    node.cpus, node.memory_mb, node.local_gb = facts.cpus, facts.memory_mb, facts.local_gb
    node.boot_mode = facts.boot_mode
    node.extra_specs = {**(node.extra_specs or {}), **facts.capabilities}
    if facts.outcome.maintenance is not None:
        node.maintenance = True
        node.maintenance_reason = facts.outcome.maintenance
        node.maintenance_set_by = "inspection"
        await history.record(session, [history.maintenance(node.id, True, node.maintenance_reason, "inspection")])
    added: list[str] = []
    macs = [i.address for i in facts.interfaces]
    rows = (await session.scalars(select(Interface).where(Interface.address.in_(macs)))).all() if macs else []
    by_mac = {r.address: r for r in rows}
    for iface in facts.interfaces:
        row = by_mac.get(iface.address)
        if row is not None and row.bm_node_id != node.id:
            raise Conflict(f"interface {iface.address} of the report belongs to node {row.bm_node_id}")
        if row is None:
            session.add(Interface(bm_node_id=node.id, address=iface.address, datapath_id=iface.datapath_id,
                                  port_no=iface.port_no))  # fmt: skip
            added.append(iface.address)
        elif iface.datapath_id is not None:  # LLDP heard: the switch and port as the switch says
            row.datapath_id, row.port_no = iface.datapath_id, iface.port_no
    await session.flush()
    await note_nodes(session, [node.id])
    return Applied(facts, None, added)
