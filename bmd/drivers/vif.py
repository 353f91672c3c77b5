"""VIF plugging, the seed's semantics: clear every interface of the node, then bind each VIF to the first
interface without one. The binding is stored first (one transaction, all or nothing); the VIF driver then
wires the network side — ``generic`` does nothing more, ``openflow`` maps the switch port at the network
controller (vifinfo REST API), ``ovs`` programs an Open vSwitch bridge. If the network side fails, the
binding is removed again and the error says why: nothing is left half-bound.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.config import Settings
from bmd.db.models import Interface
from bmd.errors import Conflict, DriverError, InvalidInput

log = structlog.get_logger(__name__)


class NoFreeInterface(Conflict):
    code = "no_free_interface"


@dataclass(frozen=True, slots=True)
class VifBinding:
    """One VIF bound to one of the node's interfaces, with what the network side needs."""

    interface_id: int
    address: str
    datapath_id: str | None
    port_no: int | None
    vif_uuid: str
    network_id: str
    vlan_id: int | None


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


class VifDriver(abc.ABC):
    """The network side of plugging. ``attach`` is all or nothing; ``detach`` is idempotent."""

    name = ""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def attach(self, bindings: Sequence[VifBinding]) -> None: ...

    @abc.abstractmethod
    async def detach(self, bindings: Sequence[VifBinding]) -> None: ...

    async def close(self) -> None:
        return None


class GenericVif(VifDriver):
    """The database binding only."""

    name = "generic"

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        return None

    async def detach(self, bindings: Sequence[VifBinding]) -> None:
        return None


def _port_of(b: VifBinding) -> tuple[str, int]:
    if b.datapath_id is None or b.port_no is None:
        raise InvalidInput(
            f"interface {b.address} has no datapath_id/port_no; the switch port of a VIF must be known",
            field="interfaces.datapath_id",
        )
    return b.datapath_id, b.port_no


class OpenFlowVif(VifDriver):
    """Maps each bound interface's switch port to the VIF at the controller (``GET``/``POST /vifinfo``)."""

    name = "openflow"

    def __init__(self, settings: Settings | None = None) -> None:
        from bmd.network.vifinfo import VifInfoClient, VifInfoSettings

        super().__init__(settings)
        net = (settings or Settings()).network
        self.client = VifInfoClient(
            VifInfoSettings(url=net.controller_url, timeout=net.controller_timeout, retries=net.controller_retries)
        )

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        done: list[VifBinding] = []
        try:
            for b in bindings:
                datapath_id, port_no = _port_of(b)
                await self.client.ensure(b.vif_uuid, datapath_id, port_no)
                done.append(b)
        except BaseException:
            await self._undo(done)
            raise

    async def _undo(self, done: Sequence[VifBinding]) -> None:
        for b in done:
            try:
                await self.client.delete(b.vif_uuid)
            except DriverError as err:  # the original error matters more; this one is logged
                log.warning("vif_undo_failed", vif=b.vif_uuid, error=str(err))

    async def detach(self, bindings: Sequence[VifBinding]) -> None:
        for b in bindings:
            await self.client.delete(b.vif_uuid)

    async def close(self) -> None:
        await self.client.close()


class OVSVif(VifDriver):
    """Puts each bound interface's switch port on the network's VLAN on an Open vSwitch bridge."""

    name = "ovs"

    def __init__(self, settings: Settings | None = None) -> None:
        from bmd.network.ovs import OVSBridge

        super().__init__(settings)
        net = (settings or Settings()).network
        self.bridge = OVSBridge(net.ovs_bridge, net.ovs_db or None, run_dir=net.ovs_run_dir or None)

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        done: list[VifBinding] = []
        try:
            for b in bindings:
                _, port_no = _port_of(b)
                if b.vlan_id is None:
                    raise InvalidInput(f"vif {b.vif_uuid}: the network has no VLAN", field="networks.vlan")
                await self.bridge.attach(port_no, b.vlan_id, b.vif_uuid)
                done.append(b)
        except BaseException:
            for b in done:
                try:
                    await self.bridge.detach(b.vif_uuid)
                except DriverError as err:
                    log.warning("vif_undo_failed", vif=b.vif_uuid, error=str(err))
            raise

    async def detach(self, bindings: Sequence[VifBinding]) -> None:
        for b in bindings:
            await self.bridge.detach(b.vif_uuid)


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
