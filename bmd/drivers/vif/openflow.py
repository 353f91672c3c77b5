"""``openflow``: maps each bound interface's switch port to its VIF at the OpenFlow controller (vifinfo)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from bmd.config import Settings
from bmd.drivers.vif.base import VifBinding, VifDriver, switch_port
from bmd.drivers.vif.vifinfo import VifInfoClient, VifInfoSettings
from bmd.errors import DriverError

log = structlog.get_logger(__name__)


class OpenFlowVif(VifDriver):
    """Maps each bound interface's switch port to the VIF at the controller (``GET``/``POST /vifinfo``)."""

    name = "openflow"

    def __init__(self, client: VifInfoClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenFlowVif:
        net = settings.network
        return cls(
            VifInfoClient(
                VifInfoSettings(url=net.controller_url, timeout=net.controller_timeout, retries=net.controller_retries)
            )
        )

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        done: list[VifBinding] = []
        try:
            for b in bindings:
                datapath_id, port_no = switch_port(b)
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
