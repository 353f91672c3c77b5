"""``ovs``: puts each bound interface's switch port on the network's VLAN on an Open vSwitch bridge
(programmed by :mod:`bmd.drivers.vif.ovs_bridge`)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from bmd.config import Settings
from bmd.drivers.vif.base import VifBinding, VifDriver, switch_port
from bmd.drivers.vif.ovs_bridge import OVSBridge
from bmd.errors import DriverError, InvalidInput

log = structlog.get_logger(__name__)


class OVSVif(VifDriver):
    """Puts each bound interface's switch port on the network's VLAN on an Open vSwitch bridge."""

    name = "ovs"

    def __init__(self, bridge: OVSBridge) -> None:
        self.bridge = bridge

    @classmethod
    def from_settings(cls, settings: Settings) -> OVSVif:
        net = settings.network
        return cls(OVSBridge(net.ovs_bridge, net.ovs_db or None, run_dir=net.ovs_run_dir or None))

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        done: list[VifBinding] = []
        try:
            for b in bindings:
                _, port_no = switch_port(b)
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
