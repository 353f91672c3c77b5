"""VIF plugging, the seed's ``plug_vifs`` and its semantics: clear every interface of the node, then bind
each VIF to the first interface without one. The binding is stored first (one transaction, all or nothing);
the VIF driver then wires the network side: ``generic`` does nothing more, ``openflow`` maps the switch
port at the network controller (vifinfo REST API), ``ovs`` programs an Open vSwitch bridge. If the network
side fails, the binding is removed again and the error says why: nothing is left half-bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.db.models import Interface
from bmd.drivers.vif.base import VifBinding, VifDriver
from bmd.errors import Conflict, InvalidInput

log = structlog.get_logger(__name__)


class NoFreeInterface(Conflict):
    code = "no_free_interface"


@dataclass(frozen=True, slots=True)
class VifRequest:
    """One (network, mapping) pair of the seed's network_info."""

    vif_uuid: str
    network_id: str
    vlan_id: int | None = None

    @classmethod
    def from_network_info(cls, entry: Any) -> VifRequest:
        try:
            network, mapping = entry
            return cls(str(mapping["vif_uuid"]), str(network["id"]), network.get("vlan"))
        except (TypeError, ValueError, KeyError) as err:
            raise InvalidInput(f"network_info entry {entry!r} is not (network, mapping)", "network_info") from err


async def _bind(session: AsyncSession, node_id: int, requests: Sequence[VifRequest]) -> list[VifBinding]:
    await session.execute(update(Interface).where(Interface.bm_node_id == node_id).values(vif_uuid=None))
    ifaces = (
        (await session.execute(select(Interface).where(Interface.bm_node_id == node_id).order_by(Interface.id)))
        .scalars()
        .all()
    )
    if len(requests) > len(ifaces):
        raise NoFreeInterface(
            f"node {node_id} has {len(ifaces)} interface(s) for {len(requests)} VIF(s): no free interface"
        )
    bindings = []
    for iface, req in zip(ifaces, requests, strict=False):
        iface.vif_uuid = req.vif_uuid
        bindings.append(
            VifBinding(
                iface.id, iface.address, iface.datapath_id, iface.port_no, req.vif_uuid, req.network_id, req.vlan_id
            )
        )
    try:
        await session.flush()
    except IntegrityError as err:
        raise Conflict(f"a VIF of this request is already bound to another interface: {err.orig}") from err
    return bindings


async def bound_vifs(session: AsyncSession, node_id: int, vlan_id: int | None = None) -> list[VifBinding]:
    rows = (
        await session.execute(
            select(Interface)
            .where(Interface.bm_node_id == node_id, Interface.vif_uuid.is_not(None))
            .order_by(Interface.id)
        )
    ).scalars()
    return [VifBinding(i.id, i.address, i.datapath_id, i.port_no, i.vif_uuid or "", "", vlan_id) for i in rows]


async def plug_vifs(
    sessionmaker: async_sessionmaker[AsyncSession],
    driver: VifDriver,
    node_id: int,
    network_info: Sequence[Any],
) -> list[VifBinding]:
    """Bind every VIF of ``network_info`` to a free interface of the node, then wire the network side."""
    requests = [VifRequest.from_network_info(e) for e in network_info]
    async with sessionmaker.begin() as session:
        bindings = await _bind(session, node_id, requests)
    try:
        await driver.attach(bindings)
    except BaseException:
        async with sessionmaker.begin() as session:
            await session.execute(update(Interface).where(Interface.bm_node_id == node_id).values(vif_uuid=None))
        raise
    log.info("vifs_plugged", node=node_id, vifs=[b.vif_uuid for b in bindings])
    return bindings


async def unplug_vifs(
    sessionmaker: async_sessionmaker[AsyncSession], driver: VifDriver, node_id: int, vlan_id: int | None = None
) -> None:
    """Unwire the network side of every bound VIF, then clear the bindings (idempotent)."""
    async with sessionmaker() as session:
        bindings = await bound_vifs(session, node_id, vlan_id)
    if bindings:
        await driver.detach(bindings)
    async with sessionmaker.begin() as session:
        await session.execute(update(Interface).where(Interface.bm_node_id == node_id).values(vif_uuid=None))
    if bindings:
        log.info("vifs_unplugged", node=node_id, vifs=[b.vif_uuid for b in bindings])
